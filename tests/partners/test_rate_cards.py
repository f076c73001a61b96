"""Rate cards are versions in force from ``effective_from``; a transaction keeps its card."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from coalition.db import transaction
from coalition.errors import PartnerNotActive, ValidationFailed
from partners.rates import create_partner, list_rate_cards
from tests.conftest import Db


def only_card(db: Db, partner_id: str) -> str:
    with transaction(db.sessions) as s:
        [card] = list_rate_cards(s, partner_id)
        return card.id


def test_an_earn_uses_the_card_in_force_when_the_purchase_occurred(db: Db) -> None:
    shop = db.partner("EUR", earn="1")
    first = only_card(db, shop.id)
    switch = db.clock.now + timedelta(days=1)
    second = db.rate_card(shop.id, earn="2", effective_from=switch)
    member = db.member()
    db.clock.advance(days=2)

    def earn(reference: str, occurred: timedelta | None) -> tuple[int, str | None]:
        posted = db.ops.earn(
            shop.id,
            member_id=member,
            reference=reference,
            amount="10.00",
            currency="EUR",
            occurred_at=None if occurred is None else switch + occurred,
        )
        return posted.transaction.points, posted.transaction.rate_card_id

    assert earn("before", -timedelta(hours=12)) == (10, first)
    assert earn("just-before", -timedelta(microseconds=1)) == (10, first)
    assert earn("at-switch", timedelta(0)) == (20, second.id)
    assert earn("now", None) == (20, second.id)


def test_burns_and_captures_use_the_card_in_force_when_posted(lite: Db) -> None:
    shop = lite.partner("EUR", burn="0.01")
    member = lite.member(1000, shop)
    hold = lite.ops.hold(shop.id, member_id=member, reference="cart", points=100, expires_in=7200)
    before = lite.ops.burn(shop.id, member_id=member, reference="b1", points=100)
    assert before.transaction.amount_minor == 100  # EUR 1.00

    new = lite.rate_card(shop.id, burn="0.02", effective_from=lite.clock.now + timedelta(hours=1))
    lite.clock.advance(hours=1)
    after = lite.ops.burn(shop.id, member_id=member, reference="b2", points=100)
    captured = lite.ops.capture(shop.id, hold.hold.id)

    assert (after.transaction.amount_minor, after.transaction.rate_card_id) == (200, new.id)
    assert (captured.transaction.amount_minor, captured.transaction.rate_card_id) == (200, new.id)


def test_a_reversal_uses_the_card_of_the_transaction_it_reverses(lite: Db) -> None:
    shop = lite.partner("EUR", earn="1")
    first = only_card(lite, shop.id)
    member = lite.member()
    earn = lite.ops.earn(shop.id, member_id=member, reference="e", amount="50", currency="EUR")
    lite.rate_card(shop.id, earn="3", effective_from=lite.clock.now + timedelta(minutes=1))
    lite.clock.advance(minutes=2)

    refund = lite.ops.reverse(shop.id, earn.transaction.id, reference="r", points=20)

    assert refund.transaction.rate_card_id == first
    assert refund.transaction.amount_minor == 2000  # 20 of 50 points of EUR 50.00


def test_a_new_card_changes_no_past_transaction(db: Db) -> None:
    shop = db.partner("EUR", earn="1", issue="0.01")
    first = only_card(db, shop.id)
    member = db.member()
    old = db.ops.earn(shop.id, member_id=member, reference="old", amount="25.50", currency="EUR")
    db.rate_card(shop.id, earn="5", issue="0.02", effective_from=db.clock.now + timedelta(hours=1))
    db.clock.advance(days=1)
    db.ops.earn(shop.id, member_id=member, reference="new", amount="25.50", currency="EUR")

    again = db.ops.get_transaction(shop.id, old.transaction.id)
    assert (again.rate_card_id, again.points, again.amount_minor, again.currency) == (
        first,
        25,
        2550,
        "EUR",
    )
    with transaction(db.sessions) as s:
        cards = list_rate_cards(s, shop.id)
    assert [str(c.earn_points_per_unit) for c in cards] == ["5", "1"]  # newest first
    assert str(cards[1].issue_price_per_point) == "0.01"


def test_a_rate_card_is_never_edited_in_place(db: Db) -> None:
    shop = db.partner("EUR")
    card = only_card(db, shop.id)
    with pytest.raises(DBAPIError, match="append-only"), transaction(db.sessions) as s:
        s.execute(
            text("UPDATE rate_cards SET earn_points_per_unit = '9' WHERE id = :id"), {"id": card}
        )


def test_a_rate_card_may_not_start_in_the_past(lite: Db) -> None:
    shop = lite.partner("EUR")
    lite.clock.advance(hours=2)
    with pytest.raises(ValidationFailed) as info:
        lite.rate_card(shop.id, earn="2", effective_from=lite.clock.now - timedelta(hours=1))
    assert info.value.errors[0]["path"] == "effective_from"
    # A few minutes of clock skew between the operator and the server are tolerated.
    card = lite.rate_card(shop.id, earn="2", effective_from=lite.clock.now - timedelta(minutes=4))
    assert card.effective_from == lite.clock.now - timedelta(minutes=4)


def test_a_rate_card_may_not_start_before_or_with_the_newest_card(lite: Db) -> None:
    shop = lite.partner("EUR")
    newest = lite.clock.now + timedelta(days=2)
    lite.rate_card(shop.id, earn="2", effective_from=newest)
    for start in (newest - timedelta(days=1), newest):
        with pytest.raises(ValidationFailed) as info:
            lite.rate_card(shop.id, earn="3", effective_from=start)
        assert info.value.errors[0]["path"] == "effective_from"
    lite.rate_card(shop.id, earn="3", effective_from=newest + timedelta(seconds=1))


def test_rates_out_of_range_are_refused_with_their_field(lite: Db) -> None:
    shop = lite.partner("EUR")
    later = lite.clock.now + timedelta(hours=1)
    cases: dict[str, dict[str, Any]] = {
        "burn_value_per_point": {"burn": "0"},
        "earn_points_per_unit": {"earn": "-1"},
        "max_burn_share": {"max_burn_share": "1.5"},
        "issue_price_per_point": {"issue": "0.0000000000001"},  # 13 decimal places
    }
    for field, values in cases.items():
        with pytest.raises(ValidationFailed) as info:
            lite.rate_card(shop.id, effective_from=later, **values)
        assert info.value.errors[0]["path"] == field


def test_a_partner_cannot_earn_before_its_first_card_starts(lite: Db) -> None:
    with transaction(lite.sessions) as s:
        shop = create_partner(s, name="Late", currency="EUR", now=lite.clock.now)
    lite.rate_card(shop.id, effective_from=lite.clock.now + timedelta(days=1))
    member = lite.member()
    with pytest.raises(PartnerNotActive):
        lite.ops.earn(shop.id, member_id=member, reference="e1", amount="10", currency="EUR")
    lite.clock.advance(days=1)
    assert (
        lite.ops.earn(
            shop.id, member_id=member, reference="e1", amount="10", currency="EUR"
        ).transaction.points
        == 10
    )
