"""Migration 0016_tier_basis on a database that holds a ledger: down to ``qualifying_days``
and up again to the basis on the member row, on both backends; the basis comes back exactly as
the write path kept it, and an upgrade whose result differs from ``qualifying_days`` is refused
whole."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text

from coalition.db import _alembic_config, transaction
from partners.operations import EarnItem
from tests.conftest import Db

BEFORE = "0015_transfers"


def _bases(db: Db) -> list[Any]:
    with db.engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT id, tier_day, tier_since_day, tier_points FROM members ORDER BY id")
            ).all()
        )


def _ledger(db: Db) -> None:
    """Earns over several days (single, backdated, a batch) and a reversal."""
    shop = db.partner("EUR", earn="1")
    members = [db.member() for _ in range(4)]
    db.clock.advance(days=3)
    for day in range(3):
        for n, member in enumerate(members[:3]):
            ref = f"e{day}-{n}"
            db.ops.earn(shop.id, member_id=member, reference=ref, amount="12", currency="EUR")
        db.clock.advance(days=1)
    items = [
        EarnItem(members[k % 3], f"b{k}", "3", "EUR", db.clock() - timedelta(hours=7 * k))
        for k in range(12)
    ]
    assert not [r for r in db.ops.earn_many(shop.id, items) if isinstance(r, Exception)]
    big = db.ops.earn(shop.id, member_id=members[0], reference="big", amount="90", currency="EUR")
    db.ops.reverse(shop.id, big.transaction.id, reference="r1", points=40)


def test_the_tier_basis_goes_to_qualifying_days_and_back_the_same(db: Db) -> None:
    _ledger(db)
    before = _bases(db)
    assert any(day is not None for _, day, _, _ in before)
    assert any(day is None for _, day, _, _ in before)  # a member without an earn
    config = _alembic_config(db.engine)
    command.downgrade(config, BEFORE)
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM qualifying_days")).scalar_one() > 0
    command.upgrade(config, "head")
    assert _bases(db) == before
    db.assert_ledger_ok()


@pytest.mark.postgres
def test_the_upgrade_refuses_a_basis_that_differs_from_qualifying_days(pg: Db) -> None:
    _ledger(pg)
    config = _alembic_config(pg.engine)
    command.downgrade(config, BEFORE)
    with transaction(pg.sessions) as s:
        s.execute(text("UPDATE qualifying_days SET points = points + 1"))
    with pytest.raises(RuntimeError, match="tier basis differs"):
        command.upgrade(config, "head")
    with pg.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == BEFORE
        assert conn.execute(text("SELECT count(*) FROM qualifying_days")).scalar_one() > 0
