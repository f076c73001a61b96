"""How the console writes numbers, money and times: thousands separated, amounts with their
currency and the currency's decimals, times in words with their zone (UTC, as stored)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from coalition.money import exponent, from_minor

MINUS = "\u2212"  # a real minus sign: as wide as a digit, unlike the hyphen


def points(value: int | None) -> str:
    """``12,345`` (``-`` written as a minus sign)."""
    if value is None:
        return ""
    text = f"{abs(int(value)):,}"
    return MINUS + text if value < 0 else text


def money(value: int | str | Decimal | None, currency: str) -> str:
    """An amount with its currency: minor units (int) or a decimal string, ``1,234.50 EUR``."""
    if value is None:
        return ""
    amount = from_minor(value, currency) if isinstance(value, int) else Decimal(value)
    places = exponent(currency)
    text = f"{abs(amount):,.{places}f}"
    return f"{MINUS if amount < 0 else ''}{text} {currency}"


def rate(value: str | Decimal | None) -> str:
    """A rate as the rate card has it (``0.008``); empty when absent."""
    return "" if value is None else f"{Decimal(value).normalize():f}"


def _moment(value: datetime | str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value


def when(value: datetime | str | None) -> str:
    """``5 Jan 2026, 09:00 UTC``."""
    if value is None:
        return ""
    moment = _moment(value)
    return f"{moment.day} {moment:%b %Y, %H:%M} UTC"


def day(value: datetime | str | None) -> str:
    """``Monday 5 January 2026``."""
    if value is None:
        return ""
    moment = _moment(value)
    return f"{moment:%A} {moment.day} {moment:%B %Y}"


def days_away(value: datetime | str, now: datetime) -> str:
    """How far ahead a moment is, in days: ``today``, ``tomorrow``, ``in 1,095 days``."""
    days = (_moment(value).date() - now.date()).days
    if days <= 0:
        return "today"
    return "tomorrow" if days == 1 else f"in {days:,} days"


def iso(value: datetime | str | None) -> str:
    """RFC 3339 UTC, for ``<time datetime>``."""
    if value is None:
        return ""
    return _moment(value).isoformat().replace("+00:00", "Z")


def words(value: str) -> str:
    """An identifier in words: ``earn_reversal`` -> ``earn reversal``."""
    return value.replace("_", " ").replace("-", " ")


FILTERS: dict[str, Callable[..., Any]] = {
    "points": points,
    "money": money,
    "rate": rate,
    "when": when,
    "day": day,
    "iso": iso,
    "days_away": days_away,
    "words": words,
}
