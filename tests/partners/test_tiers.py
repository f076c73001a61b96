"""Tiers: qualifying points (earns less earn reversals) over a trailing window decide the
multiplier of the next earns; each earn records the tier it used."""

from __future__ import annotations

from datetime import timedelta

from coalition.config import parse_tiers
from tests.conftest import Db


def test_a_member_crossing_the_silver_threshold_earns_at_the_silver_rate_afterwards(
    db: Db,
) -> None:
    shop = db.partner("EUR", earn="1")
    member = db.member()

    crossing = db.ops.earn(shop.id, member_id=member, reference="e1", amount="5000", currency="EUR")
    assert (crossing.transaction.points, crossing.transaction.tier) == (5000, "base")
    assert db.ops.balance(member).tier == "silver"

    after = db.ops.earn(shop.id, member_id=member, reference="e2", amount="10.01", currency="EUR")
    # floor(10.01 x 1 x 1.3) = floor(13.013)
    assert (after.transaction.points, after.transaction.tier) == (13, "silver")


def test_the_trailing_window_drops_old_earns(db: Db) -> None:
    shop = db.partner("EUR", earn="1")
    member = db.member()
    db.ops.earn(shop.id, member_id=member, reference="e1", amount="6000", currency="EUR")
    db.clock.advance(days=db.settings.tier_window_days - 1)
    still = db.ops.earn(shop.id, member_id=member, reference="e2", amount="100", currency="EUR")
    assert (still.transaction.points, still.transaction.tier) == (130, "silver")

    db.clock.advance(days=2)  # the 6000 points are now outside the window; 130 are inside
    later = db.ops.earn(shop.id, member_id=member, reference="e3", amount="100", currency="EUR")
    assert (later.transaction.points, later.transaction.tier) == (100, "base")
    assert db.ops.balance(member).tier == "base"


def test_an_earn_reversal_lowers_the_qualifying_points(lite: Db) -> None:
    shop = lite.partner("EUR", earn="1")
    member = lite.member()
    big = lite.ops.earn(shop.id, member_id=member, reference="e1", amount="5000", currency="EUR")
    lite.ops.reverse(shop.id, big.transaction.id, reference="r1", points=1)

    next_earn = lite.ops.earn(
        shop.id, member_id=member, reference="e2", amount="10", currency="EUR"
    )
    assert (next_earn.transaction.points, next_earn.transaction.tier) == (10, "base")


def test_a_backdated_earn_uses_the_tier_of_when_it_occurred(db: Db) -> None:
    shop = db.partner("EUR", earn="1")
    db.clock.advance(days=400)
    member = db.member()
    db.ops.earn(shop.id, member_id=member, reference="recent", amount="6000", currency="EUR")

    old = db.ops.earn(
        shop.id,
        member_id=member,
        reference="old",
        amount="100",
        currency="EUR",
        occurred_at=db.clock.now - timedelta(days=db.settings.tier_window_days + 10),
    )
    assert (old.transaction.points, old.transaction.tier) == (100, "base")


def test_configured_tiers_replace_the_defaults(lite: Db) -> None:
    lite.configure(tiers=parse_tiers("member:0:1, vip:100:2, elite:1000:3"))
    shop = lite.partner("EUR", earn="1")
    member = lite.member()
    first = lite.ops.earn(shop.id, member_id=member, reference="e1", amount="100", currency="EUR")
    second = lite.ops.earn(shop.id, member_id=member, reference="e2", amount="100", currency="EUR")
    third = lite.ops.earn(shop.id, member_id=member, reference="e3", amount="1000", currency="EUR")
    fourth = lite.ops.earn(shop.id, member_id=member, reference="e4", amount="1", currency="EUR")
    assert [(p.transaction.tier, p.transaction.points) for p in (first, second, third, fourth)] == [
        ("member", 100),
        ("vip", 200),
        ("vip", 2000),
        ("elite", 3),
    ]
