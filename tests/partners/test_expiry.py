"""Points live in lots that expire at their date: soonest-expiring first, breakage recorded,
held points protected while the hold lasts, and no one spends points past their date."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from coalition.errors import InsufficientPoints
from coalition.models import OPERATOR_ACCOUNTS, Lot, LotMovement, Member, Transaction
from settlement.reports import liability_at
from tests.conftest import Db


def expiries(db: Db, member_id: str) -> list[int]:
    with db.sessions() as s:
        return list(
            s.scalars(
                select(Transaction.points)
                .where(Transaction.member_id == member_id, Transaction.kind == "expiry")
                .order_by(Transaction.posted_at)
            )
        )


def account_of(db: Db, member_id: str) -> int:
    with db.sessions() as s:
        account = s.scalar(select(Member.account_id).where(Member.id == member_id))
    assert account is not None
    return account


def test_points_expire_at_their_date_and_not_a_second_before(db: Db) -> None:
    shop = db.partner("EUR")
    member = db.member(100, shop)
    expires = db.clock.now + timedelta(days=db.settings.points_validity_days)
    assert db.ops.balance(member).expiring == [(100, expires)]

    db.clock.now = expires - timedelta(seconds=1)
    assert db.ops.expire_points() == 0
    assert db.ops.balance(member).available == 100

    db.clock.now = expires
    assert db.ops.expire_points() == 1
    assert db.ops.balance(member).available == 0
    assert db.ops.balance(member).expiring == []
    assert expiries(db, member) == [100]
    assert db.ops.expire_points() == 0  # nothing expires twice
    db.assert_ledger_ok()


def test_the_soonest_expiring_lots_are_spent_first(db: Db) -> None:
    grocer = db.partner("EUR", name="Grocer")
    airline = db.partner("EUR", name="Airline")
    bookshop = db.partner("EUR", name="Bookshop")
    db.clock.advance(days=200)
    member = db.member()
    # The grocer's points were earned later but occurred earlier: they expire first.
    db.ops.earn(airline.id, member_id=member, reference="a", amount="100", currency="EUR")
    db.ops.earn(
        grocer.id,
        member_id=member,
        reference="g",
        amount="80",
        currency="EUR",
        occurred_at=db.clock.now - timedelta(days=100),
    )

    burn = db.ops.burn(bookshop.id, member_id=member, reference="b", points=110)

    with db.sessions() as s:
        moves = s.execute(
            select(LotMovement.origin_partner_id, LotMovement.points, Lot.expires_at)
            .join(Lot, Lot.id == LotMovement.lot_id)
            .where(LotMovement.transaction_id == burn.transaction.id)
            .order_by(LotMovement.id)
        ).all()
    validity = timedelta(days=db.settings.points_validity_days)
    assert [tuple(m) for m in moves] == [
        (grocer.id, -80, db.clock.now - timedelta(days=100) + validity),
        (airline.id, -30, db.clock.now + validity),
    ]
    assert db.ops.balance(member).expiring == [(70, db.clock.now + validity)]


def test_lots_expiring_together_are_spent_oldest_first(lite: Db) -> None:
    first = lite.partner("EUR", name="First")
    second = lite.partner("EUR", name="Second")
    member = lite.member()
    for shop in (first, second):
        lite.ops.earn(shop.id, member_id=member, reference="same-day", amount="10", currency="EUR")

    burn = lite.ops.burn(first.id, member_id=member, reference="b", points=15)

    with lite.sessions() as s:
        origins = s.execute(
            select(LotMovement.origin_partner_id, LotMovement.points)
            .where(LotMovement.transaction_id == burn.transaction.id)
            .order_by(LotMovement.id)
        ).all()
    assert [tuple(o) for o in origins] == [(first.id, -10), (second.id, -5)]


def test_expired_points_are_recorded_as_breakage(lite: Db) -> None:
    shop = lite.partner("EUR")
    member = lite.member(100, shop)
    lite.ops.burn(shop.id, member_id=member, reference="b", points=30)
    lite.clock.advance(days=lite.settings.points_validity_days)
    before = lite.clock.now

    assert lite.ops.expire_points() == 1

    with lite.sessions() as s:
        txn = s.scalars(select(Transaction).where(Transaction.kind == "expiry")).one()
        liability = liability_at(s, before)
    assert (txn.member_id, txn.points, txn.partner_id, txn.balance_after) == (member, 70, None, 0)
    breakage = OPERATOR_ACCOUNTS["operator_breakage"]
    assert (txn.debit_account_id, txn.credit_account_id) == (account_of(lite, member), breakage)
    assert liability == 0
    lite.assert_ledger_ok()


def test_held_points_do_not_expire_until_the_hold_ends(db: Db) -> None:
    db.configure(points_validity_days=30)
    shop = db.partner("EUR")
    member = db.member(100, shop)
    expires = db.clock.now + timedelta(days=30)
    db.clock.now = expires - timedelta(hours=1)
    kept = db.ops.hold(shop.id, member_id=member, reference="kept", points=60, expires_in=86400)
    db.clock.now = expires

    assert db.ops.expire_points() == 1
    balance = db.ops.balance(member)
    assert (balance.available, balance.held) == (0, 60)
    assert expiries(db, member) == [40]
    assert db.ops.expire_points() == 0  # the held points wait for the hold

    db.ops.void(shop.id, kept.hold.id)
    assert db.ops.expire_points() == 1
    assert expiries(db, member) == [40, 60]
    assert db.ops.balance(member).available == 0
    db.assert_ledger_ok()


def test_held_points_expire_once_the_hold_expires(lite: Db) -> None:
    lite.configure(points_validity_days=30)
    shop = lite.partner("EUR")
    member = lite.member(100, shop)
    lite.clock.advance(days=30, hours=-1)
    lite.ops.hold(shop.id, member_id=member, reference="h", points=100, expires_in=7200)
    lite.clock.advance(hours=1)
    assert lite.ops.expire_points() == 0  # everything is held

    lite.clock.advance(hours=1)
    assert lite.ops.expire_holds() == 1
    assert lite.ops.expire_points() == 1
    assert expiries(lite, member) == [100]
    lite.assert_ledger_ok()


def test_a_hold_placed_before_the_date_can_be_captured_after_it(lite: Db) -> None:
    lite.configure(points_validity_days=30)
    shop = lite.partner("EUR")
    member = lite.member(100, shop)
    lite.clock.advance(days=30, hours=-1)
    hold = lite.ops.hold(shop.id, member_id=member, reference="h", points=70, expires_in=7200)
    lite.clock.advance(hours=1)
    lite.ops.expire_points()

    captured = lite.ops.capture(shop.id, hold.hold.id)

    assert captured.transaction.points == 70
    assert (captured.member.balance, captured.member.held) == (0, 0)
    assert expiries(lite, member) == [30]
    lite.assert_ledger_ok()


def test_a_burn_after_the_date_does_not_spend_expired_points(db: Db) -> None:
    db.configure(points_validity_days=30)
    shop = db.partner("EUR")
    member = db.member(100, shop)
    db.clock.advance(days=10)
    db.ops.earn(shop.id, member_id=member, reference="fresh", amount="50", currency="EUR")
    db.clock.advance(days=20)  # the first 100 points are due; no expiry job has run

    with pytest.raises(InsufficientPoints) as info:
        db.ops.burn(shop.id, member_id=member, reference="too-much", points=51)
    assert info.value.extra["available"] == 50
    burn = db.ops.burn(shop.id, member_id=member, reference="ok", points=50)

    assert burn.member.balance == 0
    assert expiries(db, member) == [100]  # the burn expired the due lot first
    with db.sessions() as s:
        taken = s.execute(
            select(Lot.points, LotMovement.points)
            .join(Lot, Lot.id == LotMovement.lot_id)
            .where(LotMovement.transaction_id == burn.transaction.id)
        ).all()
    assert [tuple(t) for t in taken] == [(50, -50)]
    db.assert_ledger_ok()


def test_a_hold_after_the_date_does_not_reserve_expired_points(lite: Db) -> None:
    lite.configure(points_validity_days=30)
    shop = lite.partner("EUR")
    member = lite.member(100, shop)
    lite.clock.advance(days=30)

    with pytest.raises(InsufficientPoints) as info:
        lite.ops.hold(shop.id, member_id=member, reference="h", points=1)
    assert info.value.extra["available"] == 0


def test_points_a_burn_reversal_returns_to_an_expired_lot_expire_again(lite: Db) -> None:
    lite.configure(points_validity_days=30)
    shop = lite.partner("EUR")
    member = lite.member(100, shop)
    burn = lite.ops.burn(shop.id, member_id=member, reference="b", points=40)
    lite.clock.advance(days=31)
    assert lite.ops.expire_points() == 1
    assert expiries(lite, member) == [60]

    refund = lite.ops.reverse(shop.id, burn.transaction.id, reference="r")

    assert refund.member.balance == 40  # back into the lot they came from, which has expired
    assert lite.ops.expire_points() == 1
    assert expiries(lite, member) == [60, 40]
    lite.assert_ledger_ok()


def test_a_member_sees_what_expires_when_soonest_first(lite: Db) -> None:
    shop = lite.partner("EUR")
    lite.clock.advance(days=100)
    member = lite.member(30, shop)
    lite.ops.earn(
        shop.id,
        member_id=member,
        reference="older",
        amount="20",
        currency="EUR",
        occurred_at=lite.clock.now - timedelta(days=50),
    )
    validity = timedelta(days=lite.settings.points_validity_days)
    assert lite.ops.balance(member).expiring == [
        (20, lite.clock.now - timedelta(days=50) + validity),
        (30, lite.clock.now + validity),
    ]


def test_a_balance_read_shows_points_past_their_date_as_gone_before_any_job_runs(db: Db) -> None:
    shop = db.partner("EUR")
    member = db.member(100, shop)
    db.clock.advance(days=30)
    db.ops.earn(shop.id, member_id=member, reference="later", amount="40", currency="EUR")
    db.ops.hold(shop.id, member_id=member, reference="h", points=30, expires_in=60)
    db.clock.now = (
        db.clock.now - timedelta(days=30) + timedelta(days=db.settings.points_validity_days)
    )
    balance = db.ops.balance(member)  # no expiry job has run: the hold and the lot are overdue
    assert (balance.available, balance.held) == (40, 0)
    assert [points for points, _ in balance.expiring] == [40]
    assert all(at > db.clock.now for _, at in balance.expiring)
    # what the next operation sees is what the read said
    assert db.ops.expire_holds() == 1 and db.ops.expire_points() == 1
    after = db.ops.balance(member)
    assert (after.available, after.held, after.expiring) == (40, 0, balance.expiring)
    db.assert_ledger_ok()
