"""Money as ``Decimal`` in the partner's currency, with ISO 4217 exponents; points as ``int``.

Amounts are stored as integer minor units (``amount_minor``), so sums in SQL are exact on every
database. Rounding is half-even to the currency's exponent, once per line.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, InvalidOperation

from coalition.errors import invariant

# ISO 4217 list one: currencies whose minor unit is not 2. Every other active code below has 2.
_EXPONENT_0 = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split()
_EXPONENT_3 = "BHD IQD JOD KWD LYD OMR TND".split()
_EXPONENT_4 = "CLF UYW".split()
_EXPONENT_2 = """
AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP BYN BZD
CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL
GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR
LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD
PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC
SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW
ZWG
""".split()

EXPONENTS: dict[str, int] = {
    **dict.fromkeys(_EXPONENT_2, 2),
    **dict.fromkeys(_EXPONENT_0, 0),
    **dict.fromkeys(_EXPONENT_3, 3),
    **dict.fromkeys(_EXPONENT_4, 4),
}

#: The most money one operation, or one statement line, may be worth, in major units (a bound
#: on everything): at the largest exponent (4) a line is at most 10^13 minor units, so a
#: statement's totals (BIGINT, 9.2 x 10^18) hold 900,000 lines of the largest size.
MAX_AMOUNT = Decimal("1000000000")
#: A plain decimal string: digits, optionally a point and more digits; nothing around them.
DECIMAL_TEXT = re.compile(r"[0-9]{1,30}(?:\.[0-9]{1,30})?")
#: The largest number of points in one operation (and one statement line).
MAX_POINTS = 10**12


class MoneyError(ValueError):
    """An amount or currency that cannot be used; ``path`` names the offending field."""

    def __init__(self, message: str, path: str = "amount") -> None:
        super().__init__(message)
        self.path = path


def exponent(currency: str) -> int:
    """The ISO 4217 exponent of ``currency``; :class:`MoneyError` for an unknown code."""
    try:
        return EXPONENTS[currency]
    except KeyError:
        raise MoneyError(f"unknown ISO 4217 currency {currency!r}", "currency") from None


def quantum(currency: str) -> Decimal:
    """The smallest unit of ``currency`` as a Decimal (``0.01`` for EUR, ``1`` for JPY)."""
    return Decimal(1).scaleb(-exponent(currency))


def parse_amount(raw: str, currency: str, *, path: str = "amount") -> Decimal:
    """Parse a positive decimal string in major units with at most the currency's exponent.

    ``"12.50"`` is fine for EUR, ``"12.5"`` too; ``"12.505"`` is not (EUR has 2 decimals).
    """
    exp = exponent(currency)
    # Decimal() alone would take white space around the digits ("1.00\n"), exponents and signs.
    if not isinstance(raw, str) or not DECIMAL_TEXT.fullmatch(raw):
        raise MoneyError(f"not a decimal amount: {raw!r}", path)
    try:
        value = Decimal(raw)
    except (InvalidOperation, TypeError):
        raise MoneyError(f"not a decimal amount: {raw!r}", path) from None
    if not value.is_finite():
        raise MoneyError("amount must be a finite number", path)
    if value <= 0:
        raise MoneyError("amount must be positive", path)
    if value > MAX_AMOUNT:
        raise MoneyError(f"amount exceeds the limit of {MAX_AMOUNT}", path)
    if value != value.quantize(quantum(currency), rounding=ROUND_FLOOR):
        raise MoneyError(f"{currency} amounts have at most {exp} decimal places", path)
    return value.quantize(quantum(currency))


def round_money(value: Decimal, currency: str) -> Decimal:
    """Round half-even to the currency's exponent."""
    return value.quantize(quantum(currency), rounding=ROUND_HALF_EVEN)


def to_minor(value: Decimal, currency: str) -> int:
    """Major units (already at the currency's exponent) to integer minor units."""
    scaled = value.scaleb(exponent(currency))
    invariant(
        scaled == scaled.to_integral_value(), f"{value} has more decimals than {currency} has"
    )
    return int(scaled)


def from_minor(minor: int, currency: str) -> Decimal:
    """Integer minor units to a Decimal in major units with exactly the currency's exponent."""
    return Decimal(minor).scaleb(-exponent(currency)).quantize(quantum(currency))


def format_amount(minor: int, currency: str) -> str:
    """Minor units as the contract's decimal string (``"12.50"``, ``"1200"`` for JPY)."""
    return str(from_minor(minor, currency))


def floor_points(value: Decimal) -> int:
    """Points are whole numbers; fractions are dropped."""
    return int(value.to_integral_value(rounding=ROUND_FLOOR))


def ceil_points(value: Decimal) -> int:
    """Points needed to pay for an amount: the next whole point up."""
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def line_fits(points: int, unit_price: Decimal | str) -> bool:
    """Whether ``points`` at ``unit_price`` per point is something the ledger can bill: at
    most :data:`MAX_POINTS` points worth at most :data:`MAX_AMOUNT` (what every operation is
    held to at input; a row of older data may break it, and the close leaves it off)."""
    return 0 <= points <= MAX_POINTS and points * Decimal(unit_price) <= MAX_AMOUNT
