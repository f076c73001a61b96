"""One row too large to bill never blocks a close: a posting worth more than a line can hold
(older data, written before the input bounds) is left off its statement, and the close says so,
and so does ``coalition check``; everything else is billed as usual."""

from __future__ import annotations

from decimal import Decimal

import pytest

import partners.earning
from coalition.db import transaction
from coalition.ids import new_id
from partners.models import RateCard
from tests.conftest import Db
from tests.settlement.helpers import close_at, documents, ref


def _old_card(db: Db, partner_id: str, issue_price: Decimal) -> None:
    """A rate card as the service accepted them before rates were bounded (below 10^18)."""
    with transaction(db.sessions) as s:
        s.add(
            RateCard(
                id=new_id("rc"),
                partner_id=partner_id,
                effective_from=db.clock(),
                earn_points_per_unit=Decimal(1),
                issue_price_per_point=issue_price,
                burn_value_per_point=Decimal("0.01"),
                reimburse_price_per_point=Decimal("0.01"),
                max_burn_share=None,
                created_at=db.clock(),
            )
        )


def test_a_row_too_large_to_bill_is_left_off_and_reported_and_the_close_finishes(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = db.partner("EUR", name="Big")
    small = db.partner("EUR", name="Small")
    member = db.member()
    fine = db.ops.earn(big.id, member_id=member, reference=ref(), amount="5", currency="EUR")
    other = db.ops.earn(small.id, member_id=member, reference=ref(), amount="7", currency="EUR")
    db.clock.advance(minutes=1)
    # 100 points at 10^17 per point: 10^21 cents, past BIGINT; earned as the service did before
    # an operation's worth was bounded.
    _old_card(db, big.id, Decimal(10**17))
    with monkeypatch.context() as old_code:
        old_code.setattr(partners.earning, "check_worth", lambda *_: None)
        huge = db.ops.earn(big.id, member_id=member, reference=ref(), amount="100", currency="EUR")
    db.clock.advance(hours=1)

    closed = close_at(db, db.clock())

    assert closed.created
    assert [(u.transaction_id, u.partner_id, u.points) for u in closed.unbilled] == [
        (huge.transaction.id, big.id, 100)
    ]
    assert "worth more than 1000000000" in closed.unbilled[0].reason
    docs = documents(db, closed)
    billed = {p: [line["transaction_id"] for line in d["lines"]] for p, d in docs.items()}
    assert billed == {big.id: [fine.transaction.id], small.id: [other.transaction.id]}
    assert docs[big.id]["totals"]["issued_points"] == 5
    violations = db.violations()
    assert list(violations) == [5], violations
    [finding] = violations[5]
    assert finding.startswith("transaction too large to bill, left off its statement")
    assert huge.transaction.id in finding
    # Closing the same cut-off again answers the same period and says the same.
    again = close_at(db, closed.period.end_at)
    assert not again.created
    assert [u.transaction_id for u in again.unbilled] == [huge.transaction.id]
