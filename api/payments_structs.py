"""Request and response structs of the payment endpoints: partners' bank details, payment
runs and their files, bank statements in, the reconciliation queue (docs/payments.md). The
answers the domain shapes itself (bank details, a run, an import, a bank entry) are its own
structs (:mod:`settlement.payments`)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from msgspec import Meta, Struct

from api.structs import LINE, Request, full_match
from settlement.payments.reconcile import BankEntryOut

Holder = Annotated[
    str, Meta(min_length=1, max_length=70, pattern=LINE, description="The account holder.")
]
Iban = Annotated[
    str,
    Meta(
        min_length=5,
        max_length=42,
        pattern=full_match("[A-Za-z0-9 ]+", "letters, digits and spaces"),
        description="An IBAN (spaces allowed); its checksum and its country's format are checked.",
        examples=["DE89 3704 0044 0532 0130 00"],
    ),
]
Bic = Annotated[
    str,
    Meta(
        min_length=8,
        max_length=11,
        pattern=full_match("[A-Za-z0-9]+", "letters and digits"),
        description="A BIC (ISO 9362), 8 or 11 characters.",
        examples=["COBADEFFXXX"],
    ),
]
MandateId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=35,
        pattern=full_match(
            "[A-Za-z0-9+?/:().,' -]+", "letters, digits, spaces and the SEPA characters +?/:().,'-"
        ),
        description="The SEPA direct debit mandate's reference.",
    ),
]
StatementIdText = Annotated[
    str,
    Meta(
        min_length=5,
        max_length=40,
        pattern=full_match("stmt_[0-9A-Z]{1,35}", "a statement id: stmt_ and 1 to 35 of [0-9A-Z]"),
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


class PaymentRunSummary(Struct):
    """A run in a list."""

    id: str
    status: Literal["created", "cancelled"]
    execution_date: date
    created_at: datetime


class PaymentRunList(Struct):
    """The latest runs, newest first."""

    data: list[PaymentRunSummary]


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
