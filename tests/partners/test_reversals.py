"""Reversals (refunds): never beyond what is left; a clawback of spent points is recorded and
repaid by the member's next points; a burn's points go back where they came from."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from coalition.errors import InsufficientPoints, NotFound, ReversalExceedsOriginal, ValidationFailed
from coalition.models import Lot
from tests.conftest import Db


def lots(db: Db, member: str) -> list[tuple[int, int, bool, str | None]]:
    """The member's lots in creation order: (points, remaining, is_deficit, origin)."""
    with db.sessions() as s:
        rows = s.execute(
            select(Lot.points, Lot.remaining, Lot.is_deficit, Lot.origin_partner_id)
            .where(Lot.member_id == member)
            .order_by(Lot.id)
        ).all()
    return [(p, r, d, o) for p, r, d, o in rows]


def test_a_reversal_never_takes_more_than_is_left(lite: Db) -> None:
    shop = lite.partner("EUR")
    member = lite.member()
    earn = lite.ops.earn(shop.id, member_id=member, reference="e", amount="100", currency="EUR")
    txn = earn.transaction.id

    lite.ops.reverse(shop.id, txn, reference="r1", points=60)
    with pytest.raises(ReversalExceedsOriginal) as info:
        lite.ops.reverse(shop.id, txn, reference="r2", points=41)
    assert info.value.extra["remaining_points"] == 40
    rest = lite.ops.reverse(shop.id, txn, reference="r3")  # the default: all that is left
    assert (rest.transaction.points, rest.member.balance) == (40, 0)
    with pytest.raises(ReversalExceedsOriginal) as info:
        lite.ops.reverse(shop.id, txn, reference="r4")
    assert info.value.extra["remaining_points"] == 0
    lite.assert_ledger_ok()


def test_only_the_partners_own_earns_and_burns_can_be_reversed(lite: Db) -> None:
    shop = lite.partner("EUR", name="Shop")
    other = lite.partner("EUR", name="Other")
    member = lite.member(100, shop)
    earn = lite.ops.earn(shop.id, member_id=member, reference="e", amount="10", currency="EUR")
    refund = lite.ops.reverse(shop.id, earn.transaction.id, reference="r", points=5)
    bonus = lite.ops.bonus(member_id=member, points=5, reason="welcome", funded_by=shop.id)

    with pytest.raises(NotFound):
        lite.ops.reverse(other.id, earn.transaction.id, reference="x1")
    with pytest.raises(NotFound):
        lite.ops.reverse(shop.id, "txn_unknown", reference="x2")
    for not_reversible in (refund, bonus):
        with pytest.raises(ValidationFailed):
            lite.ops.reverse(shop.id, not_reversible.transaction.id, reference="x3")


def test_an_earn_reversal_takes_back_its_own_lot_first(lite: Db) -> None:
    shop = lite.partner("EUR")
    lite.clock.advance(days=10)
    member = lite.member()
    older = lite.ops.earn(
        shop.id,
        member_id=member,
        reference="older",
        amount="50",
        currency="EUR",
        occurred_at=lite.clock.now - timedelta(days=5),
    )
    newer = lite.ops.earn(shop.id, member_id=member, reference="newer", amount="30", currency="EUR")

    lite.ops.reverse(shop.id, newer.transaction.id, reference="r", points=20)

    assert lots(lite, member) == [(50, 50, False, shop.id), (30, 10, False, shop.id)]
    assert older.transaction.points == 50


def test_an_earn_reversal_of_spent_points_takes_the_member_negative_on_record(db: Db) -> None:
    shop = db.partner("EUR")
    member = db.member()
    earn = db.ops.earn(shop.id, member_id=member, reference="e", amount="100", currency="EUR")
    db.ops.burn(shop.id, member_id=member, reference="b", points=80)

    clawback = db.ops.reverse(shop.id, earn.transaction.id, reference="refund")

    assert (clawback.transaction.points, clawback.transaction.overdraft_points) == (100, 80)
    assert clawback.member.balance == clawback.transaction.balance_after == -80
    assert lots(db, member) == [(100, 0, False, shop.id), (0, -80, True, None)]
    balance = db.ops.balance(member)
    assert (balance.available, balance.expiring) == (-80, [])
    with pytest.raises(InsufficientPoints):
        db.ops.burn(shop.id, member_id=member, reference="b2", points=1)
    db.assert_ledger_ok()  # negative, and recorded as a clawback


def test_the_next_points_fill_the_deficit_first(lite: Db) -> None:
    shop = lite.partner("EUR")
    member = lite.member()
    earn = lite.ops.earn(shop.id, member_id=member, reference="e", amount="100", currency="EUR")
    lite.ops.burn(shop.id, member_id=member, reference="b", points=100)
    lite.ops.reverse(shop.id, earn.transaction.id, reference="refund")

    partly = lite.ops.earn(shop.id, member_id=member, reference="e2", amount="30", currency="EUR")
    assert partly.member.balance == -70
    assert lots(lite, member)[1:] == [(0, -70, True, None), (30, 0, False, shop.id)]

    repaid = lite.ops.bonus(member_id=member, points=100, reason="goodwill", funded_by="coalition")
    assert repaid.member.balance == 30
    assert lots(lite, member)[1:] == [
        (0, 0, True, None),
        (30, 0, False, shop.id),
        (100, 30, False, None),
    ]
    assert lite.ops.balance(member).available == 30
    lite.assert_ledger_ok()


def test_a_clawback_of_held_points_leaves_the_hold_capturable(db: Db) -> None:
    shop = db.partner("EUR")
    member = db.member()
    earn = db.ops.earn(shop.id, member_id=member, reference="e", amount="100", currency="EUR")
    hold = db.ops.hold(shop.id, member_id=member, reference="h", points=70)

    clawback = db.ops.reverse(shop.id, earn.transaction.id, reference="r", points=50)

    assert clawback.transaction.overdraft_points == 20  # only 30 were available
    assert (clawback.member.balance, clawback.member.held) == (50, 70)
    assert db.ops.balance(member).available == -20
    db.assert_ledger_ok()  # held above the balance, on record

    captured = db.ops.capture(shop.id, hold.hold.id)  # the hold guaranteed the points
    assert (captured.member.balance, captured.member.held) == (-20, 0)
    assert lots(db, member)[-1] == (0, -20, True, None)
    db.assert_ledger_ok()


def test_a_burn_reversal_returns_points_to_the_lots_they_came_from(db: Db) -> None:
    grocer = db.partner("EUR", name="Grocer")
    airline = db.partner("EUR", name="Airline")
    db.clock.advance(days=10)
    member = db.member()
    db.ops.earn(
        grocer.id,
        member_id=member,
        reference="g",
        amount="40",
        currency="EUR",
        occurred_at=db.clock.now - timedelta(days=5),
    )
    db.ops.earn(airline.id, member_id=member, reference="a", amount="60", currency="EUR")
    burn = db.ops.burn(grocer.id, member_id=member, reference="b", points=90)
    assert lots(db, member) == [(40, 0, False, grocer.id), (60, 10, False, airline.id)]

    # Latest-expiring first: the airline's lot gets its points back before the grocer's.
    db.ops.reverse(grocer.id, burn.transaction.id, reference="r1", points=55)
    assert lots(db, member) == [(40, 5, False, grocer.id), (60, 60, False, airline.id)]
    db.ops.reverse(grocer.id, burn.transaction.id, reference="r2")
    assert lots(db, member) == [(40, 40, False, grocer.id), (60, 60, False, airline.id)]
    validity = timedelta(days=db.settings.points_validity_days)
    expiring: list[tuple[int, datetime]] = db.ops.balance(member).expiring
    assert expiring == [
        (40, db.clock.now - timedelta(days=5) + validity),
        (60, db.clock.now + validity),
    ]
    db.assert_ledger_ok()


def test_reversing_a_capture_beyond_the_lots_returns_the_points_as_a_new_lot(db: Db) -> None:
    shop = db.partner("EUR")
    member = db.member()
    earn = db.ops.earn(shop.id, member_id=member, reference="e", amount="100", currency="EUR")
    hold = db.ops.hold(shop.id, member_id=member, reference="h", points=100)
    db.ops.reverse(shop.id, earn.transaction.id, reference="clawback")  # the held points go
    capture = db.ops.capture(shop.id, hold.hold.id)  # taken from the deficit: -100
    db.ops.earn(shop.id, member_id=member, reference="e2", amount="30", currency="EUR")
    assert db.ops.balance(member).available == -70

    refund = db.ops.reverse(shop.id, capture.transaction.id, reference="refund")

    assert refund.member.balance == 30
    # The refunded capture comes back as a new lot (no origin), which first repays the deficit.
    assert lots(db, member)[-1] == (100, 30, False, None)
    assert db.ops.balance(member).expiring == [
        (30, db.clock.now + timedelta(days=db.settings.points_validity_days))
    ]
    db.assert_ledger_ok()
