"""Who may act on what terms: active partners with a rate card, in their own currency, within
the basket cap, for members that exist, with well-formed input."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from coalition.db import transaction
from coalition.errors import (
    BurnCapExceeded,
    CurrencyMismatch,
    NotFound,
    PartnerNotActive,
    UnknownMember,
    ValidationFailed,
)
from coalition.models import Transaction
from partners.rates import create_partner, update_partner
from tests.conftest import Db


def set_status(db: Db, partner_id: str, status: str) -> None:
    with transaction(db.sessions) as s:
        update_partner(s, partner_id, status=status)


def test_a_suspended_partner_can_neither_earn_nor_burn_nor_hold(db: Db) -> None:
    shop = db.partner("EUR")
    member = db.member(100, shop)
    set_status(db, shop.id, "suspended")

    with pytest.raises(PartnerNotActive):
        db.ops.earn(shop.id, member_id=member, reference="e", amount="10", currency="EUR")
    with pytest.raises(PartnerNotActive):
        db.ops.burn(shop.id, member_id=member, reference="b", points=10)
    with pytest.raises(PartnerNotActive):
        db.ops.hold(shop.id, member_id=member, reference="h", points=10)
    assert db.ops.balance(member).available == 100

    set_status(db, shop.id, "active")
    db.ops.earn(shop.id, member_id=member, reference="e", amount="10", currency="EUR")
    assert db.ops.balance(member).available == 110


def test_a_partner_without_a_rate_card_is_not_active(lite: Db) -> None:
    with transaction(lite.sessions) as s:
        shop = create_partner(s, name="New", currency="EUR", now=lite.clock.now)
    member = lite.member()
    lite.ops.bonus(member_id=member, points=50, reason="welcome", funded_by="coalition")

    with pytest.raises(PartnerNotActive):
        lite.ops.earn(shop.id, member_id=member, reference="e", amount="10", currency="EUR")
    with pytest.raises(PartnerNotActive):
        lite.ops.burn(shop.id, member_id=member, reference="b", points=10)
    with pytest.raises(PartnerNotActive):
        lite.ops.hold(shop.id, member_id=member, reference="h", points=10)
    with pytest.raises(PartnerNotActive):
        lite.ops.bonus(member_id=member, points=5, reason="promo", funded_by=shop.id)
    assert lite.ops.balance(member).available == 50


def test_an_unknown_partner_is_not_found(lite: Db) -> None:
    member = lite.member()
    with pytest.raises(NotFound):
        lite.ops.earn("prt_nope", member_id=member, reference="e", amount="1", currency="EUR")
    with pytest.raises(ValidationFailed) as info:
        lite.ops.bonus(member_id=member, points=5, reason="promo", funded_by="prt_nope")
    assert info.value.errors[0]["path"] == "funded_by"


def test_money_in_another_currency_than_the_partners_is_refused(lite: Db) -> None:
    shop = lite.partner("EUR")
    member = lite.member(100, shop)
    with pytest.raises(CurrencyMismatch) as info:
        lite.ops.earn(shop.id, member_id=member, reference="e", amount="10", currency="USD")
    assert info.value.extra["expected"] == "EUR"
    with pytest.raises(CurrencyMismatch):
        lite.ops.burn(shop.id, member_id=member, reference="b", amount="1", currency="JPY")
    assert lite.ops.balance(member).available == 100


def test_points_may_pay_at_most_the_partners_share_of_a_basket(lite: Db) -> None:
    shop = lite.partner("EUR", burn="0.01", max_burn_share="0.2")
    member = lite.member(5000, shop)

    with pytest.raises(BurnCapExceeded) as info:
        lite.ops.burn(shop.id, member_id=member, reference="b1", points=1001, basket_amount="50")
    assert info.value.extra["max_amount"] == "10.00"
    with pytest.raises(BurnCapExceeded):
        lite.ops.burn(
            shop.id,
            member_id=member,
            reference="b2",
            amount="10.01",
            currency="EUR",
            basket_amount="50.00",
        )
    at_cap = lite.ops.burn(
        shop.id, member_id=member, reference="b3", points=1000, basket_amount="50"
    )
    assert at_cap.transaction.amount_minor == 1000
    # Without a basket there is nothing to cap.
    lite.ops.burn(shop.id, member_id=member, reference="b4", points=2000)
    assert lite.ops.balance(member).available == 2000


def test_without_a_share_points_may_pay_at_most_the_whole_basket(lite: Db) -> None:
    shop = lite.partner("EUR", burn="0.01")
    member = lite.member(5000, shop)
    with pytest.raises(BurnCapExceeded) as info:
        lite.ops.burn(shop.id, member_id=member, reference="b1", points=501, basket_amount="5")
    assert info.value.extra["max_amount"] == "5.00"
    lite.ops.burn(shop.id, member_id=member, reference="b2", points=500, basket_amount="5")


def test_an_unknown_member_is_refused_and_nothing_is_written(lite: Db) -> None:
    shop = lite.partner("EUR")
    ghost = "mem_ghost"
    attempts: list[Callable[[], object]] = [
        lambda: lite.ops.earn(shop.id, member_id=ghost, reference="e", amount="10", currency="EUR"),
        lambda: lite.ops.burn(shop.id, member_id=ghost, reference="b", points=1),
        lambda: lite.ops.hold(shop.id, member_id=ghost, reference="h", points=1),
        lambda: lite.ops.bonus(member_id=ghost, points=1, reason="r", funded_by="coalition"),
        lambda: lite.ops.adjust(member_id=ghost, points=1, reason="r"),
        lambda: lite.ops.adjust(member_id=ghost, points=-1, reason="r"),
        lambda: lite.ops.balance(ghost),
    ]
    for attempt in attempts:
        with pytest.raises(UnknownMember) as info:
            attempt()
        assert info.value.extra["member_id"] == ghost
    with lite.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Transaction)) == 0


def test_a_member_id_chosen_by_the_caller_is_kept_and_created_once(lite: Db) -> None:
    assert lite.ops.create_member("mem_alice-1") == ("mem_alice-1", True)
    assert lite.ops.create_member("mem_alice-1") == ("mem_alice-1", False)
    made, created = lite.ops.create_member()
    assert made.startswith("mem_") and created
    for bad in ("alice", "mem_", "mem_a b", "mem_" + "x" * 65):
        with pytest.raises(ValidationFailed) as info:
            lite.ops.create_member(bad)
        assert info.value.errors[0]["path"] == "member_id"


def test_malformed_input_is_refused_at_its_path(lite: Db) -> None:
    shop = lite.partner("EUR")
    member = lite.member(100, shop)
    now = lite.clock.now
    cases: dict[str, Callable[[], object]] = {
        "reference": lambda: lite.ops.burn(
            shop.id, member_id=member, reference="has space", points=1
        ),
        "points": lambda: lite.ops.burn(shop.id, member_id=member, reference="p", points=0),
        "": lambda: lite.ops.burn(
            shop.id, member_id=member, reference="x", points=1, amount="1", currency="EUR"
        ),
        "currency": lambda: lite.ops.burn(shop.id, member_id=member, reference="c", amount="1"),
        "expires_in": lambda: lite.ops.hold(
            shop.id, member_id=member, reference="h", points=1, expires_in=8 * 86400
        ),
        "occurred_at": lambda: lite.ops.earn(
            shop.id,
            member_id=member,
            reference="o",
            amount="1",
            currency="EUR",
            occurred_at=now + timedelta(minutes=6),
        ),
        "reason": lambda: lite.ops.adjust(member_id=member, points=5, reason=" "),
    }
    for path, attempt in cases.items():
        with pytest.raises(ValidationFailed) as info:
            attempt()
        assert [e["path"] for e in info.value.errors] == [path]
    with pytest.raises(ValidationFailed) as info:
        lite.ops.adjust(member_id=member, points=0, reason="nothing")
    assert info.value.errors[0]["path"] == "points"
    assert lite.ops.balance(member).available == 100


def test_an_earn_may_occur_a_little_ahead_of_the_clock_but_not_before_its_points_expire(
    lite: Db,
) -> None:
    shop = lite.partner("EUR")
    member = lite.member()
    validity = timedelta(days=lite.settings.points_validity_days)
    lite.clock.advance(days=lite.settings.points_validity_days + 1)
    lite.ops.earn(
        shop.id,
        member_id=member,
        reference="skew",
        amount="1",
        currency="EUR",
        occurred_at=lite.clock.now + timedelta(minutes=4),
    )
    with pytest.raises(ValidationFailed) as info:
        lite.ops.earn(
            shop.id,
            member_id=member,
            reference="stale",
            amount="1",
            currency="EUR",
            occurred_at=lite.clock.now - validity,
        )
    assert info.value.errors[0]["path"] == "occurred_at"


def test_an_unknown_currency_is_a_validation_error_at_its_path(lite: Db) -> None:
    shop = lite.partner("EUR")
    member = lite.member(10, shop)
    calls: list[Callable[[], object]] = [
        lambda: lite.ops.earn(shop.id, member_id=member, reference="e", amount="1", currency="XYZ"),
        lambda: lite.ops.burn(shop.id, member_id=member, reference="b", amount="1", currency="XYZ"),
    ]
    for call in calls:
        with pytest.raises(ValidationFailed) as failure:
            call()
        assert failure.value.errors[0]["path"] == "currency"
    assert lite.ops.balance(member).available == 10
