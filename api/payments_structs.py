"""Request and response structs of the payment endpoints: partners' bank details, payment
runs and their files, bank statements in, the reconciliation queue (docs/payments.md)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from msgspec import Meta, Struct

from api.structs import LINE, Request

Holder = Annotated[
    str, Meta(min_length=1, max_length=70, pattern=LINE, description="The account holder.")
]
Iban = Annotated[
    str,
    Meta(
        min_length=5,
        max_length=42,
        pattern=r"^[A-Za-z0-9 ]+\Z",
        description="An IBAN (spaces allowed); its checksum and its country's format are checked.",
        examples=["DE89 3704 0044 0532 0130 00"],
    ),
]
Bic = Annotated[
    str,
    Meta(
        min_length=8,
        max_length=11,
        pattern=r"^[A-Za-z0-9]+\Z",
        description="A BIC (ISO 9362), 8 or 11 characters.",
        examples=["COBADEFFXXX"],
    ),
]
MandateId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=35,
        pattern=r"^[A-Za-z0-9+?/:().,' -]+\Z",
        description="The SEPA direct debit mandate's reference.",
    ),
]
StatementIdText = Annotated[
    str,
    Meta(
        min_length=5,
        max_length=40,
        pattern=r"^stmt_[0-9A-Z]{1,35}\Z",
        examples=["stmt_01KB7Z4V3K9N3R6S7T8V9W0X1Y"],
    ),
]
Day = Annotated[date, Meta(description="A day, YYYY-MM-DD.", examples=["2026-02-02"])]
Note = Annotated[str, Meta(min_length=1, max_length=2000, description="Why, for the record.")]
RunNote = Annotated[str, Meta(min_length=1, max_length=500, pattern=LINE)]


class BankAccountPut(Request):
    """``PUT /v1/admin/partners/{id}/bank-account``: the new details (pending until another
    finance key approves)."""

    holder: Holder
    iban: Iban
    bic: Bic | None = None
    mandate_id: MandateId | None = None
    mandate_signed_on: Day | None = None


class BankAccountVersion(Struct):
    """One version of a partner's bank details."""

    id: str
    status: Literal["pending", "active", "retired", "replaced"]
    holder: str
    iban: str
    bic: str | None
    mandate_id: str | None
    mandate_signed_on: date | None
    proposed_by: str
    proposed_at: datetime
    approved_by: str | None
    approved_at: datetime | None


class BankAccountOut(Struct):
    """A partner's bank details: ``status`` of the answer (``pending`` after a change,
    ``active`` after an approval), the active and the pending version."""

    partner_id: str
    status: Literal["pending", "active", "none"]
    active: BankAccountVersion | None
    pending: BankAccountVersion | None


class PaymentRunCreate(Request):
    """``POST /v1/admin/payment-runs``: which statements (default: every acknowledged one with
    a non-zero net in no live run) and when (default: today)."""

    statement_ids: (
        Annotated[
            list[StatementIdText],
            Meta(min_length=1, max_length=1000, examples=[["stmt_01KB7Z4V3K9N3R6S7T8V9W0X1Y"]]),
        ]
        | None
    ) = None
    execution_date: Day | None = None


class PaymentRunCancel(Request):
    """``POST /v1/admin/payment-runs/{id}/cancel``: why (optional)."""

    note: RunNote | None = None


class PaymentOut(Struct):
    """One payment of a run."""

    statement_id: str
    partner_id: str
    direction: Literal["credit_transfer", "direct_debit"]
    amount: str
    currency: str
    end_to_end_id: str
    file: str | None


class SkippedOut(Struct):
    """A statement the run does not pay, and why."""

    statement_id: str
    reason: str


class PaymentFileOut(Struct):
    """A file of a run (download it at ``.../files/{name}``)."""

    name: str
    format: Literal["pain.001.001.09", "pain.008.001.08"]
    currency: str
    transactions: int
    control_sum: str
    sha256: str


class PaymentRunOut(Struct):
    """A payment run."""

    id: str
    status: Literal["created", "cancelled"]
    execution_date: date
    created_at: datetime
    cancelled_at: datetime | None
    payments: list[PaymentOut]
    skipped: list[SkippedOut]
    files: list[PaymentFileOut]


class PaymentRunSummary(Struct):
    """A run in a list."""

    id: str
    status: Literal["created", "cancelled"]
    execution_date: date
    created_at: datetime


class PaymentRunList(Struct):
    """The latest runs, newest first."""

    data: list[PaymentRunSummary]


class MatchedOut(Struct):
    """An entry that settled a statement."""

    entry: str
    line: int
    statement_id: str | None


class UnmatchedOut(Struct):
    """An entry waiting in the reconciliation queue, and why."""

    entry: str
    line: int
    amount: str
    currency: str
    reason: str | None
    status: str


class BankStatementImported(Struct):
    """``POST /v1/admin/bank-statements``' answer."""

    id: str
    format: str
    bank_statement_id: str
    entries: int
    matched: list[MatchedOut]
    unmatched: list[UnmatchedOut]
    duplicate: bool


class BankEntryOut(Struct):
    """A bank entry of an imported statement."""

    id: str
    file_id: str
    line: int
    status: Literal["matched", "unmatched", "resolved", "dismissed"]
    reason: str | None
    amount: str
    currency: str
    direction: Literal["credit", "debit"]
    booking_date: date
    end_to_end_id: str | None
    bank_reference: str | None
    remittance: str
    account_iban: str | None
    return_reason: str | None
    reversal: bool
    statement_id: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    note: str | None


class ReconciliationPage(Struct):
    """The entries waiting for finance, newest first."""

    data: list[BankEntryOut]
    has_more: bool
    next_cursor: str | None


class ResolveEntry(Request):
    """``POST /v1/admin/reconciliation/{id}/resolve``: match to a statement (which it settles)
    or, without ``statement_id``, dismiss; ``note`` says why."""

    note: Note
    statement_id: StatementIdText | None = None
