"""A partner's ``reference`` (order or receipt id) is unique per partner and operation; a
repeat is refused naming the first transaction (or hold), and changes nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from coalition.errors import DuplicateReference, InsufficientPoints
from coalition.models import Transaction
from tests.conftest import Db


def count_transactions(db: Db) -> int:
    with db.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(Transaction)) or 0)


def test_an_earn_and_a_burn_may_share_a_reference(db: Db) -> None:
    shop = db.partner("EUR")
    member = db.member(100, shop)
    earn = db.ops.earn(shop.id, member_id=member, reference="order-1", amount="20", currency="EUR")
    burn = db.ops.burn(shop.id, member_id=member, reference="order-1", points=50)
    assert earn.transaction.reference == burn.transaction.reference == "order-1"
    refund = db.ops.reverse(shop.id, earn.transaction.id, reference="order-1")
    assert refund.transaction.kind == "earn_reversal"


def test_a_second_earn_with_a_reference_is_refused_naming_the_first(db: Db) -> None:
    shop = db.partner("EUR")
    member, other = db.member(), db.member()
    first = db.ops.earn(shop.id, member_id=member, reference="r-1", amount="20", currency="EUR")
    before = count_transactions(db)

    # Another amount, another member: the reference alone decides.
    with pytest.raises(DuplicateReference) as info:
        db.ops.earn(shop.id, member_id=other, reference="r-1", amount="99", currency="EUR")

    assert info.value.extra["transaction_id"] == first.transaction.id
    assert first.transaction.id in info.value.detail
    assert count_transactions(db) == before
    assert db.ops.balance(other).available == 0


def test_a_second_burn_with_a_reference_is_refused_naming_the_first(lite: Db) -> None:
    shop = lite.partner("EUR")
    member = lite.member(100, shop)
    first = lite.ops.burn(shop.id, member_id=member, reference="pay-1", points=10)

    with pytest.raises(DuplicateReference) as info:
        lite.ops.burn(shop.id, member_id=member, reference="pay-1", points=10)

    assert info.value.extra["transaction_id"] == first.transaction.id
    assert lite.ops.balance(member).available == 90


def test_a_reversal_reference_is_unique_per_partner_and_kind(lite: Db) -> None:
    shop = lite.partner("EUR")
    member = lite.member(100, shop)
    a = lite.ops.earn(shop.id, member_id=member, reference="a", amount="10", currency="EUR")
    b = lite.ops.earn(shop.id, member_id=member, reference="b", amount="10", currency="EUR")
    burn = lite.ops.burn(shop.id, member_id=member, reference="c", points=10)
    first = lite.ops.reverse(shop.id, a.transaction.id, reference="refund-1", points=1)

    with pytest.raises(DuplicateReference) as info:
        lite.ops.reverse(shop.id, b.transaction.id, reference="refund-1", points=1)
    assert info.value.extra["transaction_id"] == first.transaction.id
    # A burn reversal is another operation.
    lite.ops.reverse(shop.id, burn.transaction.id, reference="refund-1")


def test_partners_have_their_own_references(lite: Db) -> None:
    grocer = lite.partner("EUR", name="Grocer")
    airline = lite.partner("EUR", name="Airline")
    member = lite.member()
    for partner in (grocer, airline):
        lite.ops.earn(partner.id, member_id=member, reference="0001", amount="10", currency="EUR")
    assert lite.ops.balance(member).available == 20


def test_a_refused_operation_leaves_its_reference_free(lite: Db) -> None:
    shop = lite.partner("EUR")
    member = lite.member(10, shop)
    with pytest.raises(InsufficientPoints):
        lite.ops.burn(shop.id, member_id=member, reference="retry", points=50)
    lite.ops.earn(shop.id, member_id=member, reference="top-up", amount="40", currency="EUR")
    assert (
        lite.ops.burn(shop.id, member_id=member, reference="retry", points=50).member.balance == 0
    )


def test_a_hold_reference_is_unique_per_partner_and_names_the_hold(db: Db) -> None:
    shop = db.partner("EUR")
    member = db.member(100, shop)
    hold = db.ops.hold(shop.id, member_id=member, reference="cart-7", points=10)
    db.ops.void(shop.id, hold.hold.id)

    with pytest.raises(DuplicateReference) as info:
        db.ops.hold(shop.id, member_id=member, reference="cart-7", points=10)

    assert info.value.extra["hold_id"] == hold.hold.id
    assert db.ops.balance(member).held == 0


def test_a_capture_carries_its_holds_reference(lite: Db) -> None:
    shop = lite.partner("EUR")
    member = lite.member(100, shop)
    hold = lite.ops.hold(shop.id, member_id=member, reference="cart-8", points=10)
    capture = lite.ops.capture(shop.id, hold.hold.id)
    assert (capture.transaction.reference, capture.transaction.hold_id) == ("cart-8", hold.hold.id)
    assert capture.transaction.kind == "burn"
