"""Money and points round exactly as docs/recipes.md says, in every currency exponent.

Earn: floor of points. Burn by amount: ceil of points. Amounts: half-even to the currency's
exponent. Amounts with more decimals than the currency has are refused at ``$.amount``. The
reversals of a transaction sum exactly to its amount.
"""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from coalition.errors import ValidationFailed
from coalition.models import Transaction
from coalition.money import format_amount
from tests.conftest import Db

_refs = itertools.count()


def ref() -> str:
    return f"r-{next(_refs)}"


def test_a_yen_earn_drops_the_fraction_of_a_point(lite: Db) -> None:
    shop = lite.partner("JPY", earn="0.01", issue="1", burn="1", reimburse="0.8")
    member = lite.member()

    earn = lite.ops.earn(shop.id, member_id=member, reference="e", amount="1999", currency="JPY")

    assert (earn.transaction.points, earn.transaction.amount_minor) == (19, 1999)
    assert format_amount(earn.transaction.amount_minor or 0, "JPY") == "1999"


def test_an_amount_with_more_decimals_than_its_currency_is_refused(lite: Db) -> None:
    member = lite.member()
    for currency, amount in [
        ("JPY", "19.5"),
        ("EUR", "12.505"),
        ("BHD", "1.2345"),
        ("EUR", "0.001"),
    ]:
        shop = lite.partner(currency, earn="100")
        with pytest.raises(ValidationFailed) as info:
            lite.ops.earn(
                shop.id, member_id=member, reference="e", amount=amount, currency=currency
            )
        assert [e["path"] for e in info.value.errors] == ["amount"], amount
        with pytest.raises(ValidationFailed) as info:
            lite.ops.burn(
                shop.id, member_id=member, reference="b", amount=amount, currency=currency
            )
        assert [e["path"] for e in info.value.errors] == ["amount"], amount
    assert lite.ops.balance(member).available == 0


def test_an_amount_that_is_not_a_positive_bounded_number_is_refused(lite: Db) -> None:
    shop = lite.partner("EUR")
    member = lite.member()
    for amount in ["0", "-5.00", "abc", "NaN", "Infinity", "1000000000.01"]:
        with pytest.raises(ValidationFailed) as info:
            lite.ops.earn(shop.id, member_id=member, reference="e", amount=amount, currency="EUR")
        assert [e["path"] for e in info.value.errors] == ["amount"], amount


def test_a_basket_with_too_many_decimals_is_refused_at_its_own_path(lite: Db) -> None:
    shop = lite.partner("EUR", max_burn_share="0.5")
    member = lite.member(100, shop)
    with pytest.raises(ValidationFailed) as info:
        lite.ops.burn(shop.id, member_id=member, reference="b", points=10, basket_amount="1.001")
    assert [e["path"] for e in info.value.errors] == ["basket_amount"]


def test_dinar_amounts_keep_three_decimals(lite: Db) -> None:
    shop = lite.partner("BHD", earn="1", issue="0.004", burn="0.005", reimburse="0.004")
    member = lite.member()

    earn = lite.ops.earn(shop.id, member_id=member, reference="e", amount="10.005", currency="BHD")
    burn = lite.ops.burn(shop.id, member_id=member, reference="b", points=3)

    assert (earn.transaction.points, earn.transaction.amount_minor) == (10, 10005)
    assert format_amount(burn.transaction.amount_minor or 0, "BHD") == "0.015"


BURNS_BY_POINTS = [  # (currency, burn value, points, amount)
    # Half-even: a tie goes to the even neighbour.
    ("BHD", "0.0005", 1, "0.000"),
    ("BHD", "0.0005", 3, "0.002"),
    ("BHD", "0.0005", 5, "0.002"),
    ("BHD", "0.0004", 1, "0.000"),
    ("BHD", "0.0035", 7, "0.024"),
    ("EUR", "0.005", 1, "0.00"),
    ("EUR", "0.005", 3, "0.02"),
    ("EUR", "0.005", 5, "0.02"),
    ("EUR", "0.005", 7, "0.04"),
    ("JPY", "0.5", 3, "2"),
    ("JPY", "0.5", 5, "2"),
    ("JPY", "0.5", 7, "4"),
    ("IDR", "0.0001", 3, "0.00"),
    ("IDR", "0.0001", 150, "0.02"),
]


def test_a_burn_by_points_costs_points_times_value_rounded_half_even(db: Db) -> None:
    member = db.member()
    db.ops.bonus(member_id=member, points=1000, reason="points to burn", funded_by="coalition")
    for currency, burn_value, points, amount in BURNS_BY_POINTS:
        shop = db.partner(currency, burn=burn_value)
        burn = db.ops.burn(shop.id, member_id=member, reference="b", points=points)
        recorded = format_amount(burn.transaction.amount_minor or 0, currency)
        assert recorded == amount, (currency, burn_value, points)


BURNS_BY_AMOUNT = [  # (currency, burn value, amount, points, recorded amount)
    ("EUR", "0.03", "1.00", 34, "1.02"),  # ceil: 33.33... points pay for it
    ("EUR", "0.03", "0.99", 33, "0.99"),
    ("BHD", "0.0035", "0.010", 3, "0.010"),  # 2.857 -> 3 points, 0.0105 -> 0.010
    ("JPY", "1.5", "100", 67, "100"),  # 66.67 -> 67 points, 100.5 -> 100 (half-even)
    ("IDR", "0.0001", "0.01", 100, "0.01"),
    ("IDR", "0.0003", "0.01", 34, "0.01"),  # 33.33 -> 34 points, 0.0102 -> 0.01
]


def test_a_burn_by_amount_takes_the_next_whole_point_up(db: Db) -> None:
    member = db.member()
    db.ops.bonus(member_id=member, points=1000, reason="points to burn", funded_by="coalition")
    for currency, burn_value, amount, points, recorded in BURNS_BY_AMOUNT:
        shop = db.partner(currency, burn=burn_value)
        burn = db.ops.burn(
            shop.id, member_id=member, reference="b", amount=amount, currency=currency
        )
        got = (burn.transaction.points, format_amount(burn.transaction.amount_minor or 0, currency))
        assert got == (points, recorded), (currency, burn_value, amount)


def test_tiny_earn_rates_floor_exactly(db: Db) -> None:
    shop = db.partner("IDR", earn="0.001", issue="1", burn="10", reimburse="8")
    member = db.member()
    for amount, points in [
        ("1500.00", 1),
        ("1999.99", 1),
        ("2000.00", 2),
        ("1000000000.00", 1_000_000),
    ]:
        earn = db.ops.earn(
            shop.id, member_id=member, reference=ref(), amount=amount, currency="IDR"
        )
        assert earn.transaction.points == points, amount


def test_a_spend_that_earns_no_whole_point_is_refused(lite: Db) -> None:
    shop = lite.partner("IDR", earn="0.001", issue="1", burn="10", reimburse="8")
    member = lite.member()
    with pytest.raises(ValidationFailed) as info:
        lite.ops.earn(shop.id, member_id=member, reference="e", amount="999.99", currency="IDR")
    assert [e["path"] for e in info.value.errors] == ["amount"]
    with lite.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Transaction)) == 0


def test_the_smallest_rate_a_card_holds_is_exact(db: Db) -> None:
    shop = db.partner(
        "EUR", earn="0.000000000001", burn="0.000000000001", reimburse="0.000000000001"
    )
    member = db.member()
    # 10^9 EUR at 10^-12 points per EUR is 0.001 point: nothing to earn.
    with pytest.raises(ValidationFailed):
        db.ops.earn(shop.id, member_id=member, reference="e", amount="1000000000", currency="EUR")
    db.ops.bonus(member_id=member, points=10**12, reason="huge", funded_by="coalition")
    burn = db.ops.burn(shop.id, member_id=member, reference="b", points=10**12)
    assert format_amount(burn.transaction.amount_minor or 0, "EUR") == "1.00"


def reversal_amounts(db: Db, txn_id: str) -> list[int]:
    with db.sessions() as s:
        return [
            int(a or 0)
            for a in s.scalars(
                select(Transaction.amount_minor)
                .where(Transaction.reverses == txn_id)
                .order_by(Transaction.posted_at, Transaction.id)
            )
        ]


def test_partial_reversals_of_an_earn_sum_exactly_to_its_amount(lite: Db) -> None:
    shop = lite.partner("EUR", earn="30")
    member = lite.member()
    earn = lite.ops.earn(shop.id, member_id=member, reference="e", amount="0.10", currency="EUR")
    assert earn.transaction.points == 3

    for n in range(3):
        lite.ops.reverse(shop.id, earn.transaction.id, reference=f"r{n}", points=1)
        lite.clock.advance(seconds=1)

    # 10 cents x 1/3 is 3.33 -> 3, twice; the last reversal takes the exact remainder.
    assert reversal_amounts(lite, earn.transaction.id) == [3, 3, 4]


def test_partial_reversals_of_a_burn_sum_exactly_to_its_amount(db: Db) -> None:
    shop = db.partner("BHD", earn="10", burn="0.0035")
    member = db.member(100, shop)
    burn = db.ops.burn(shop.id, member_id=member, reference="b", points=7)
    assert burn.transaction.amount_minor == 24  # 0.0245 -> 0.024

    db.ops.reverse(shop.id, burn.transaction.id, reference="r1", points=2)
    db.clock.advance(seconds=1)
    db.ops.reverse(shop.id, burn.transaction.id, reference="r2", points=2)
    db.clock.advance(seconds=1)
    db.ops.reverse(shop.id, burn.transaction.id, reference="r3")

    # 24 x 2/7 = 6.86 -> 7, twice; the rest takes 24 - 14.
    assert reversal_amounts(db, burn.transaction.id) == [7, 7, 10]


def test_pro_rata_reversal_amounts_round_half_even(lite: Db) -> None:
    forty = lite.partner("EUR", earn="40", name="Forty")
    thirty = lite.partner("EUR", earn="30", name="Thirty")
    member = lite.member()
    ten = lite.ops.earn(forty.id, member_id=member, reference="a", amount="0.10", currency="EUR")
    fourteen = lite.ops.earn(
        thirty.id, member_id=member, reference="b", amount="0.14", currency="EUR"
    )
    assert (ten.transaction.points, fourteen.transaction.points) == (4, 4)

    # A quarter of 10 cents is 2.5 -> 2; a quarter of 14 cents is 3.5 -> 4.
    down = lite.ops.reverse(forty.id, ten.transaction.id, reference="r1", points=1)
    up = lite.ops.reverse(thirty.id, fourteen.transaction.id, reference="r2", points=1)
    assert (down.transaction.amount_minor, up.transaction.amount_minor) == (2, 4)
    half = lite.ops.reverse(forty.id, ten.transaction.id, reference="r3", points=2)
    assert half.transaction.amount_minor == 5
    rest = lite.ops.reverse(forty.id, ten.transaction.id, reference="r4")
    assert rest.transaction.amount_minor == 3  # the remainder: 10 - 2 - 5


def test_reversal_amounts_always_sum_to_the_original(lite: Db) -> None:
    shop = lite.partner("BHD", earn="7.3", burn="0.0007")
    member = lite.member()
    lite.ops.bonus(member_id=member, points=10**9, reason="cover", funded_by="coalition")

    @settings(max_examples=40, deadline=None, database=None)
    @given(
        minor=st.integers(137, 10**7),
        cuts=st.lists(st.integers(1, 10**6), min_size=1, max_size=6),
    )
    def check(minor: int, cuts: list[int]) -> None:
        spend = format_amount(minor, "BHD")
        earn = lite.ops.earn(
            shop.id, member_id=member, reference=ref(), amount=spend, currency="BHD"
        )
        points = earn.transaction.points
        amounts = []
        left = points
        for cut in cuts:
            if left <= 1:
                break
            take = 1 + cut % (left - 1)
            amounts.append(
                lite.ops.reverse(shop.id, earn.transaction.id, reference=ref(), points=take)
            )
            left -= take
        amounts.append(lite.ops.reverse(shop.id, earn.transaction.id, reference=ref()))
        assert sum(p.transaction.points for p in amounts) == points
        assert sum(p.transaction.amount_minor or 0 for p in amounts) == minor
        for posted in amounts[:-1]:
            share = Decimal(minor) * posted.transaction.points / points
            assert abs(Decimal(posted.transaction.amount_minor or 0) - share) <= Decimal("0.5")

    check()
    lite.assert_ledger_ok()
