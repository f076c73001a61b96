"""Request and response structs of the settlement endpoints (statements, disputes, periods,
reports) that the domain does not return itself. The statement document is defined once, in
:mod:`settlement.document`: the API serves its signed bytes and documents them with its
structs; a statement's summary, a dispute and the reports are the domain's own results
(:mod:`settlement.statements`, :mod:`settlement.workflow`, :mod:`settlement.reports`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from msgspec import Meta, Struct

from api.structs import LINE, AwareTime, Request, full_match
from settlement import workflow
from settlement.document import LineKind, StatementStatus
from settlement.statements import StatementSummary
from settlement.workflow import DisputeOut, DisputeOutcome

#: A ledger transaction id as a statement line names it.
TransactionId = Annotated[
    str,
    Meta(
        min_length=5,
        max_length=40,
        pattern=full_match(workflow.TRANSACTION_ID, "a transaction id (txn_...)"),
    ),
]
#: A signed decimal amount in major units (a settlement adjustment).
SignedAmount = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=24,
        pattern=full_match(
            r"-?[0-9]{1,10}(\.[0-9]{1,4})?", "a signed decimal string in major units, e.g. -12.50"
        ),
        description="A signed decimal string in major units with at most the currency's "
        "decimals; positive: the operator pays the partner more.",
        examples=["-12.50"],
    ),
]
Text2000 = Annotated[
    str, Meta(min_length=1, max_length=workflow.REASON_MAX, pattern=LINE, description="One line.")
]
PaymentReference = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=workflow.PAYMENT_REFERENCE_MAX,
        pattern=full_match(
            f"[{workflow.PAYMENT_REFERENCE_CHARS}]+",
            f"1 to {workflow.PAYMENT_REFERENCE_MAX} printable ASCII characters",
        ),
        description="The payment's reference (bank transfer id...): printable ASCII.",
        examples=["SEPA-2026-02-0042"],
    ),
]


# --- requests -----------------------------------------------------------------------------


class CloseRequest(Request):
    """``POST /v1/admin/settlement/close``: the cut-off (default: the latest scheduled one)."""

    cut_off: AwareTime | None = None


class DisputeCreate(Request):
    """``POST /v1/statements/{id}/disputes``: why, and optionally which lines."""

    reason: Text2000
    transaction_ids: Annotated[list[TransactionId], Meta(max_length=100)] | None = None


class DisputeResolve(Request):
    """``POST /v1/admin/disputes/{id}/resolve``: the outcome and, where money is owed, the
    adjustment billed on the partner's next statement."""

    outcome: DisputeOutcome
    note: Text2000 | None = None
    adjustment: SignedAmount | None = None


class SettleRequest(Request):
    """``POST /v1/admin/statements/{id}/settle``: the payment that settled it."""

    payment_reference: PaymentReference
    paid_at: AwareTime


# --- statements (the document itself: settlement.document) ---------------------------------


class StatementPage(Struct):
    """A page of statements, newest first."""

    data: list[StatementSummary]
    has_more: bool
    next_cursor: str | None


class StatementEventOut(Struct):
    """A recorded status change."""

    from_status: StatementStatus | None
    to_status: StatementStatus
    at: datetime
    key_id: str | None
    role: str
    note: str | None


class StatementEventList(Struct):
    """A statement's status history, oldest first."""

    data: list[StatementEventOut]


class DisputeList(Struct):
    """A statement's disputes, oldest first."""

    data: list[DisputeOut]


# --- periods and reports ------------------------------------------------------------------


class PeriodOut(Struct):
    """A closed period: what was posted in ``[start, end)``."""

    id: str
    start: datetime
    end: datetime
    closed_at: datetime
    cycle: Literal["daily", "weekly", "monthly", "off-cycle"]


class PeriodPage(Struct):
    """Closed periods, the latest first."""

    data: list[PeriodOut]
    has_more: bool
    next_cursor: str | None


class UnbilledOut(Struct):
    """A posting the close left off its statement: too large for the ledger to bill (data
    written before the bounds of docs/api.md); ``coalition check`` reports it too."""

    transaction_id: str
    partner_id: str
    kind: LineKind
    points: int
    reason: str


class ClosedOut(Struct):
    """The closed period and its statements (``created``: false when closed before), and the
    postings it could not bill (``unbilled``, usually empty)."""

    period: PeriodOut
    created: bool
    statements: list[StatementSummary]
    unbilled: list[UnbilledOut] = []
