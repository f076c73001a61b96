"""The statement document's shape, defined once (docs/settlement.md): what the close builds and
signs, what ``coalition statements verify`` reads back, and what the API serves and documents.

The document is signed as canonical JSON (:mod:`settlement.canonical`), so its bytes, not
these structs, are what is stored and served; the structs name its parts and their fields, in
the order the CSV export writes them (:data:`~settlement.canonical.CSV_COLUMNS`,
:data:`~settlement.canonical.TOTALS`... are their fields). The domain builds the parts that
are not lines (:class:`PeriodRef`, :class:`StatementTotals`, :class:`CrossBrandRow`) as these
structs; the lines come from the database as canonical JSON text.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import Struct

StatementStatus = Literal["issued", "acknowledged", "disputed", "settled"]
Direction = Literal["partner_pays", "operator_pays", "none"]
#: A statement line's kinds (``settlement.models.LINE_KINDS``, from the kinds table), spelt out
#: for the type checker; checked against them where they are declared.
LineKind = Literal["earn", "bonus", "earn_reversal", "burn", "burn_reversal", "adjustment"]


class PeriodRef(Struct):
    """A period as a statement names it."""

    id: str
    start: str
    end: str


class StatementLineOut(Struct):
    """A line: a billed transaction (or a dispute's adjustment, with ``dispute_id``)."""

    transaction_id: str | None
    kind: LineKind
    posted_at: str
    occurred_at: str
    points: int
    unit_price: str | None
    amount: str
    prior_period: bool
    dispute_id: str | None = None


class StatementTotals(Struct):
    """The statement's totals, the exact sums of its lines."""

    issued_points: int
    issued_amount: str
    earn_reversed_amount: str
    redeemed_points: int
    reimbursed_amount: str
    burn_reversed_amount: str
    adjustments_amount: str
    net_amount: str
    direction: Direction


class CrossBrandRow(Struct):
    """Points burned at this partner that another partner (or the coalition: null) issued."""

    origin_partner_id: str | None
    points: int


class StatementSignature(Struct):
    """The Ed25519 signature of the canonical JSON (base64url)."""

    alg: Literal["ed25519"]
    kid: str
    value: str


class StatementDocument(Struct):
    """A signed statement, exactly as signed (docs/settlement.md)."""

    id: str
    partner_id: str
    period: PeriodRef
    currency: str
    status: StatementStatus
    lines: list[StatementLineOut]
    totals: StatementTotals
    cross_brand: list[CrossBrandRow]
    content_sha256: str
    signature: StatementSignature


def fields_of(struct: type[Struct]) -> tuple[str, ...]:
    """A part's fields, in the document's order."""
    return struct.__struct_fields__


def plain(part: Any) -> Any:
    """A part (or a list of parts) as plain JSON values (dicts in field order, lists, text,
    integers, booleans, null): what canonical JSON is written from."""
    return msgspec.to_builtins(part)
