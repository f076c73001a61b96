"""Operations measured at one place, around ``Operations`` (``instrument_operations``): each
call counted by kind and outcome (ok or its problem type), points issued, redeemed and expired
counted from what the operations returned, an operation inside another counted once."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from coalition import metrics
from coalition.errors import CoalitionError
from partners.operations import EarnItem, Operations
from tests.conftest import Db


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _ops(db: Db) -> Operations:
    ops: Operations = metrics.instrument_operations(
        Operations(db.settings, db.sessions, db.clock), db.engine
    )
    return ops


def test_operations_are_counted_by_kind_and_outcome(db: Db) -> None:
    ops = _ops(db)
    partner = db.partner("EUR")
    member = db.member()
    before = {
        "earn_ok": _value("coalition_operations_total", kind="earn", outcome="ok"),
        "burn_short": _value(
            "coalition_operations_total", kind="burn", outcome="insufficient-points"
        ),
        "issued": _value("coalition_points_issued_total", kind="earn"),
        "redeemed": _value("coalition_points_redeemed_total"),
        "many_dup": _value(
            "coalition_operations_total", kind="earn_many", outcome="duplicate-reference"
        ),
    }
    ops.earn(partner.id, member_id=member, reference="m-1", amount="10.00", currency="EUR")
    ops.burn(partner.id, member_id=member, reference="b-1", points=4)
    with pytest.raises(CoalitionError):
        ops.burn(partner.id, member_id=member, reference="b-2", points=1_000)
    ops.earn_many(
        partner.id,
        [EarnItem(member, "m-1", "5.00", "EUR"), EarnItem(member, "m-2", "5.00", "EUR")],
    )
    assert _value("coalition_operations_total", kind="earn", outcome="ok") - before["earn_ok"] == 1
    assert (
        _value("coalition_operations_total", kind="burn", outcome="insufficient-points")
        - before["burn_short"]
        == 1
    )
    assert (
        _value("coalition_operations_total", kind="earn_many", outcome="duplicate-reference")
        - before["many_dup"]
        == 1
    )
    assert _value("coalition_points_issued_total", kind="earn") - before["issued"] == 15
    assert _value("coalition_points_redeemed_total") - before["redeemed"] == 4


def test_expired_points_are_counted(db: Db) -> None:
    db.configure(points_validity_days=30)
    ops = _ops(db)
    partner = db.partner("EUR")
    member = db.member(points=25, partner=partner)
    before = _value("coalition_points_expired_total")
    db.clock.advance(days=31)
    assert ops.expire_points() == 1
    assert _value("coalition_points_expired_total") - before == 25
    assert ops.balance(member).available == 0
