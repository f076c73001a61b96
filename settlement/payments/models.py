"""The payment tables: partners' bank details (four eyes), payment runs with their items and
files, imported bank statement files with their entries, and each settled statement's payment.

What the schema holds by itself (docs/payments.md):
- a partner has at most one ``active`` and at most one ``pending`` bank account
  (``uq_partner_bank_accounts_active``, ``..._pending``), and the key that approved a change is
  never the key that proposed it (``ck_partner_bank_accounts_four_eyes``);
- a statement is in at most one live (not cancelled) run as a payment
  (``uq_payment_items_live_statement``);
- a bank statement file is imported once (``uq_bank_statement_files_sha256``);
- a settled statement has exactly one payment (``statement_payments`` keyed by the statement),
  and a bank entry pays at most one statement (``uq_statement_payments_bank_entry``): the two
  halves of invariant 7, which ``coalition check`` verifies as well.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from coalition.db import Base, UTCDateTime
from coalition.models import ID, BigId

BANK_ACCOUNT_STATUSES = ("pending", "active", "retired", "replaced")
RUN_STATUSES = ("created", "cancelled")
ITEM_DIRECTIONS = ("credit_transfer", "direct_debit", "skipped")
ENTRY_STATUSES = ("matched", "unmatched", "resolved", "dismissed")
PAYMENT_KINDS = ("bank_entry", "decision")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class PartnerBankAccount(Base):
    """One version of a partner's bank details: proposed by one finance key, active only once
    another approved it; a newer proposal replaces a pending one, a newer approval retires the
    active one."""

    __tablename__ = "partner_bank_accounts"
    __table_args__ = (
        CheckConstraint(_in("status", BANK_ACCOUNT_STATUSES), name="status"),
        CheckConstraint("approved_by IS NULL OR approved_by <> proposed_by", name="four_eyes"),
        CheckConstraint(
            "(status IN ('active', 'retired'))"
            " = (approved_by IS NOT NULL AND approved_at IS NOT NULL)",
            name="approved",
        ),
        CheckConstraint(
            "(mandate_id IS NULL) = (mandate_signed_on IS NULL)", name="mandate_complete"
        ),
        Index(
            "uq_partner_bank_accounts_active",
            "partner_id",
            unique=True,
            postgresql_where=text("status = 'active'"),
            sqlite_where=text("status = 'active'"),
        ),
        Index(
            "uq_partner_bank_accounts_pending",
            "partner_id",
            unique=True,
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        Index("ix_partner_bank_accounts_partner", "partner_id", "id"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    holder: Mapped[str] = mapped_column(String(70))
    iban: Mapped[str] = mapped_column(String(34))
    bic: Mapped[str | None] = mapped_column(String(11))
    mandate_id: Mapped[str | None] = mapped_column(String(35))
    mandate_signed_on: Mapped[date | None] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16))
    #: The finance key that proposed the change (a console session counts as its key's).
    proposed_by: Mapped[str] = mapped_column(String(40))
    #: What acted: the key itself, or the console session (``csn_...``) of that key.
    proposed_via: Mapped[str] = mapped_column(String(40))
    proposed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    approved_by: Mapped[str | None] = mapped_column(String(40))
    approved_via: Mapped[str | None] = mapped_column(String(40))
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When it stopped being pending or active (replaced or retired).
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PaymentRun(Base):
    """A payment run: the statements it pays, the files for the bank; ``cancelled`` frees its
    statements for a later run."""

    __tablename__ = "payment_runs"
    __table_args__ = (
        CheckConstraint(_in("status", RUN_STATUSES), name="status"),
        CheckConstraint(
            "(status = 'cancelled') = (cancelled_at IS NOT NULL)", name="cancelled_has_time"
        ),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    execution_date: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(40))
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelled_by: Mapped[str | None] = mapped_column(String(40))
    cancel_note: Mapped[str | None] = mapped_column(String(500))


class PaymentItem(Base):
    """One statement in a run: paid by a credit transfer or a direct debit (in ``file_name``,
    to or from the bank details it names), or skipped with the reason."""

    __tablename__ = "payment_items"
    __table_args__ = (
        CheckConstraint(_in("direction", ITEM_DIRECTIONS), name="direction"),
        CheckConstraint(
            "(direction = 'skipped') = (file_name IS NULL AND reason IS NOT NULL)",
            name="skipped_has_reason",
        ),
        CheckConstraint("NOT live OR direction <> 'skipped'", name="live_is_paid"),
        CheckConstraint("amount_minor >= 0", name="amount_not_negative"),
        Index("ix_payment_items_run", "run_id", "id"),
        Index(
            "uq_payment_items_live_statement",
            "statement_id",
            unique=True,
            postgresql_where=text("live"),
            sqlite_where=text("live"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("payment_runs.id"))
    statement_id: Mapped[str] = mapped_column(ForeignKey("statements.id"))
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    direction: Mapped[str] = mapped_column(String(16))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    end_to_end_id: Mapped[str] = mapped_column(String(35))
    bank_account_id: Mapped[str | None] = mapped_column(ForeignKey("partner_bank_accounts.id"))
    file_name: Mapped[str | None] = mapped_column(String(80))
    reason: Mapped[str | None] = mapped_column(String(500))
    #: A payment of a run that is not cancelled (what the one-live-run rule is about).
    live: Mapped[bool] = mapped_column(Boolean)


class PaymentFile(Base):
    """A file of a run, as handed to the bank: the exact bytes, valid against the XSD of its
    format, never changed."""

    __tablename__ = "payment_files"

    run_id: Mapped[str] = mapped_column(ForeignKey("payment_runs.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    format: Mapped[str] = mapped_column(String(32))
    currency: Mapped[str] = mapped_column(String(3))
    transactions: Mapped[int] = mapped_column(Integer)
    control_sum_minor: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))


class BankStatementFile(Base):
    """An imported bank account statement (camt.053 or MT940): its bytes, kept as evidence."""

    __tablename__ = "bank_statement_files"
    __table_args__ = (Index("uq_bank_statement_files_sha256", "sha256", unique=True),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(32))
    bank_statement_id: Mapped[str] = mapped_column(String(140))
    entries: Mapped[int] = mapped_column(Integer)
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime)
    imported_by: Mapped[str] = mapped_column(String(40))
    content: Mapped[bytes] = mapped_column(LargeBinary)


class BankEntry(Base):
    """One entry of an imported bank statement and what became of it: ``matched`` (it settled
    ``statement_id``), ``unmatched`` (waiting in the reconciliation queue with ``reason``),
    ``resolved`` (finance matched it to ``statement_id``) or ``dismissed`` (finance's note)."""

    __tablename__ = "bank_entries"
    __table_args__ = (
        CheckConstraint(_in("status", ENTRY_STATUSES), name="status"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        CheckConstraint("status <> 'unmatched' OR reason IS NOT NULL", name="queue_has_reason"),
        CheckConstraint(
            "(status IN ('resolved', 'dismissed')) = (resolved_at IS NOT NULL)",
            name="resolution",
        ),
        CheckConstraint(
            "status NOT IN ('matched', 'resolved') OR statement_id IS NOT NULL",
            name="match_names_statement",
        ),
        Index("ix_bank_entries_file", "file_id", "line"),
        Index(
            "ix_bank_entries_queue",
            "id",
            postgresql_where=text("status = 'unmatched'"),
            sqlite_where=text("status = 'unmatched'"),
        ),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("bank_statement_files.id"))
    line: Mapped[int] = mapped_column(Integer)
    account_iban: Mapped[str | None] = mapped_column(String(34))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    credit: Mapped[bool] = mapped_column(Boolean)
    booking_date: Mapped[date] = mapped_column(Date)
    end_to_end_id: Mapped[str | None] = mapped_column(String(140))
    bank_reference: Mapped[str | None] = mapped_column(String(140))
    remittance: Mapped[str] = mapped_column(String(1000))
    reversal: Mapped[bool] = mapped_column(Boolean)
    return_reason: Mapped[str | None] = mapped_column(String(140))
    status: Mapped[str] = mapped_column(String(16))
    statement_id: Mapped[str | None] = mapped_column(ForeignKey("statements.id"))
    reason: Mapped[str | None] = mapped_column(String(500))
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(40))
    note: Mapped[str | None] = mapped_column(String(2000))


class StatementPayment(Base):
    """The payment behind a settled statement: a bank entry (matched by the import, or by
    finance from the queue) or finance's recorded decision (``POST .../settle``)."""

    __tablename__ = "statement_payments"
    __table_args__ = (
        CheckConstraint(_in("kind", PAYMENT_KINDS), name="kind"),
        CheckConstraint("(kind = 'bank_entry') = (bank_entry_id IS NOT NULL)", name="evidence"),
        Index(
            "uq_statement_payments_bank_entry",
            "bank_entry_id",
            unique=True,
            postgresql_where=text("bank_entry_id IS NOT NULL"),
            sqlite_where=text("bank_entry_id IS NOT NULL"),
        ),
    )

    statement_id: Mapped[str] = mapped_column(ForeignKey("statements.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    bank_entry_id: Mapped[str | None] = mapped_column(ForeignKey("bank_entries.id"))
    reference: Mapped[str] = mapped_column(String(255))
    paid_at: Mapped[datetime] = mapped_column(UTCDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    recorded_by: Mapped[str] = mapped_column(String(40))
