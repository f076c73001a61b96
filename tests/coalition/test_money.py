"""Money: ISO 4217 exponents, parsing request amounts, formatting stored amounts, rounding."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coalition.money import (
    EXPONENTS,
    MoneyError,
    ceil_points,
    exponent,
    floor_points,
    format_amount,
    from_minor,
    parse_amount,
    round_money,
    to_minor,
)


def test_currency_exponents_follow_iso_4217() -> None:
    expected = {"JPY": 0, "KRW": 0, "EUR": 2, "USD": 2, "IDR": 2, "BHD": 3, "KWD": 3, "CLF": 4}
    assert {code: exponent(code) for code in expected} == expected


@pytest.mark.parametrize("code", ["XXX", "EURO", "eur", "", "ABC"])
def test_an_unknown_currency_is_refused_at_the_currency_field(code: str) -> None:
    with pytest.raises(MoneyError) as info:
        exponent(code)
    assert info.value.path == "currency"
    with pytest.raises(MoneyError) as info:
        parse_amount("1", code)
    assert info.value.path == "currency"


@pytest.mark.parametrize(
    ("raw", "currency", "parsed"),
    [
        ("12.50", "EUR", "12.50"),
        ("12.5", "EUR", "12.50"),
        ("12", "EUR", "12.00"),
        ("0.01", "EUR", "0.01"),
        ("1200", "JPY", "1200"),
        ("0.001", "BHD", "0.001"),
        ("1.2345", "CLF", "1.2345"),
        ("1000000000", "EUR", "1000000000.00"),
    ],
)
def test_an_amount_is_parsed_at_its_currency_exponent(raw: str, currency: str, parsed: str) -> None:
    value = parse_amount(raw, currency)
    assert str(value) == parsed
    assert value == Decimal(parsed)


@pytest.mark.parametrize(
    ("raw", "currency"),
    [
        ("12.505", "EUR"),
        ("0.001", "EUR"),
        ("1.5", "JPY"),
        ("0.0001", "BHD"),
        ("1.23456", "CLF"),
        ("0", "EUR"),
        ("-1", "EUR"),
        ("abc", "EUR"),
        ("", "EUR"),
        ("NaN", "EUR"),
        ("Infinity", "EUR"),
        ("1000000000.01", "EUR"),
    ],
)
def test_an_amount_that_does_not_fit_is_refused_at_its_path(raw: str, currency: str) -> None:
    with pytest.raises(MoneyError) as info:
        parse_amount(raw, currency)
    assert info.value.path == "amount"
    with pytest.raises(MoneyError) as info:
        parse_amount(raw, currency, path="basket_amount")
    assert info.value.path == "basket_amount"


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (1250, "EUR", "12.50"),
        (1, "EUR", "0.01"),
        (0, "EUR", "0.00"),
        (1200, "JPY", "1200"),
        (1, "BHD", "0.001"),
        (15, "BHD", "0.015"),
        (12345, "CLF", "1.2345"),
    ],
)
def test_a_stored_amount_is_formatted_with_exactly_its_exponent(
    minor: int, currency: str, text: str
) -> None:
    assert format_amount(minor, currency) == text


@given(
    minor=st.integers(1, 10**11),
    currency=st.sampled_from(["JPY", "EUR", "BHD", "CLF", "IDR"]),
)
def test_formatting_and_parsing_round_trip(minor: int, currency: str) -> None:
    text = format_amount(minor, currency)
    if Decimal(text) <= Decimal("1000000000"):
        assert to_minor(parse_amount(text, currency), currency) == minor
    assert from_minor(minor, currency) == Decimal(text)


@pytest.mark.parametrize(
    ("value", "currency", "rounded"),
    [
        ("0.005", "EUR", "0.00"),
        ("0.015", "EUR", "0.02"),
        ("0.025", "EUR", "0.02"),
        ("0.0251", "EUR", "0.03"),
        ("2.5", "JPY", "2"),
        ("3.5", "JPY", "4"),
        ("0.0105", "BHD", "0.010"),
        ("0.0115", "BHD", "0.012"),
    ],
)
def test_money_rounds_half_even_to_the_exponent(value: str, currency: str, rounded: str) -> None:
    assert str(round_money(Decimal(value), currency)) == rounded


def test_points_are_floored_for_earns_and_ceiled_for_amounts() -> None:
    assert floor_points(Decimal("19.99")) == 19
    assert floor_points(Decimal("1")) == 1
    assert ceil_points(Decimal("33.0001")) == 34
    assert ceil_points(Decimal("33")) == 33


def test_every_known_currency_has_a_single_exponent() -> None:
    assert all(len(code) == 3 and code.isupper() for code in EXPONENTS)
    assert set(EXPONENTS.values()) == {0, 2, 3, 4}
