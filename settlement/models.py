"""The settlement tables: periods, statements and their lines, status history, disputes and
the operator's statement-signing keys.

What the schema holds by itself (docs/settlement.md):
- one period per cut-off and a chain of periods: ``end`` and ``start`` are each unique, and
  a period starts where the previous one ended;
- one statement per partner and period (``uq_statements_period_partner``);
- a ledger transaction is billed on at most one statement line, a dispute's adjustment too
  (unique ``transaction_id`` and ``dispute_id`` of ``statement_lines``);
- lines are append-only and an issued statement's money and issued hash never change (database
  triggers, migration 0004); only its status, and with it the signed document, moves on;
- lines have no foreign keys (migration 0009): invariant 5 checks each line's statement,
  transaction or dispute.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import get_args

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from coalition.db import Base, ExactDecimal, UTCDateTime
from coalition.errors import invariant
from coalition.ledger.kinds import BILLED_KINDS
from coalition.models import ID, BigId
from settlement.document import LineKind

STATEMENT_STATUSES = ("issued", "acknowledged", "disputed", "settled")
DISPUTE_STATUSES = ("open", "resolved")
DISPUTE_OUTCOMES = ("upheld", "partially_upheld", "rejected")
#: The ledger kinds a statement bills, and the settlement adjustments of resolved disputes.
#: A line's kind besides the billed ledger kinds (``coalition.ledger.kinds``): a dispute's
#: settlement adjustment, added to ``adjustments_minor`` and paid to the partner.
DISPUTE_LINE = "adjustment"
#: The kinds of statement lines.
LINE_KINDS = (*BILLED_KINDS, DISPUTE_LINE)
invariant(set(get_args(LineKind)) == set(LINE_KINDS), "the document's line kinds != the lines'")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Period(Base):
    """A settlement period: what was posted in ``[start, end)``; ``end`` is its cut-off."""

    __tablename__ = "settlement_periods"
    __table_args__ = (
        CheckConstraint("start_at < end_at", name="start_before_end"),
        Index("uq_settlement_periods_end", "end_at", unique=True),
        Index("uq_settlement_periods_start", "start_at", unique=True),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    start_at: Mapped[datetime] = mapped_column(UTCDateTime)
    end_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: ``daily``/``weekly``/``monthly`` for a scheduled cut-off, ``off-cycle`` otherwise.
    cycle: Mapped[str] = mapped_column(String(16))


class Statement(Base):
    """One partner's statement for one period, in its currency (money in minor units)."""

    __tablename__ = "statements"
    __table_args__ = (
        CheckConstraint(_in("status", STATEMENT_STATUSES), name="status"),
        CheckConstraint("direction IN ('partner_pays', 'operator_pays', 'none')", name="direction"),
        Index("uq_statements_period_partner", "period_id", "partner_id", unique=True),
        Index("ix_statements_partner", "partner_id", "id"),
        Index("ix_statements_status", "status", "id"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    period_id: Mapped[str] = mapped_column(ForeignKey("settlement_periods.id"))
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    currency: Mapped[str] = mapped_column(String(3))
    currency_exponent: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    line_count: Mapped[int] = mapped_column(BigInteger, default=0)
    issued_points: Mapped[int] = mapped_column(BigInteger, default=0)
    issued_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    earn_reversed_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    redeemed_points: Mapped[int] = mapped_column(BigInteger, default=0)
    reimbursed_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    burn_reversed_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    adjustments_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    net_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    direction: Mapped[str] = mapped_column(String(16), default="none")
    #: SHA-256 of the canonical document as issued (status ``issued``); never changes.
    issued_sha256: Mapped[str | None] = mapped_column(String(64))
    #: The canonical JSON of the current document, without ``content_sha256``/``signature``.
    document: Mapped[str | None] = mapped_column(Text)
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    signing_kid: Mapped[str | None] = mapped_column(ForeignKey("signing_keys.kid"))
    signature: Mapped[str | None] = mapped_column(String(128))
    payment_reference: Mapped[str | None] = mapped_column(String(255))
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The smallest and largest id of the statement's lines (``None``: it has none), written
    #: once at the close: its lines are ``id BETWEEN first_line_id AND last_line_id AND
    #: statement_id = id``, read through the lines' primary key (migration 0012).
    first_line_id: Mapped[int | None] = mapped_column(BigInteger)
    last_line_id: Mapped[int | None] = mapped_column(BigInteger)


class StatementLine(Base):
    """One billed transaction (or settlement adjustment) of a statement. Never changed."""

    __tablename__ = "statement_lines"
    __table_args__ = (
        CheckConstraint(_in("kind", LINE_KINDS), name="kind"),
        CheckConstraint("(transaction_id IS NULL) <> (dispute_id IS NULL)", name="one_source"),
        CheckConstraint(
            "(kind = 'adjustment') = (dispute_id IS NOT NULL)", name="adjustment_source"
        ),
        CheckConstraint(
            "kind = 'adjustment' OR (amount_minor >= 0 AND unit_price IS NOT NULL)",
            name="amount_positive",
        ),
        Index("uq_statement_lines_transaction", "transaction_id", unique=True),
        # Partial: almost every line has no dispute, and the close should not index nothing.
        Index(
            "uq_statement_lines_dispute",
            "dispute_id",
            unique=True,
            postgresql_where=text("dispute_id IS NOT NULL"),
            sqlite_where=text("dispute_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # No foreign keys (migration 0009): each was a trigger and a row lock per line at the
    # close, which builds every line from a join with its statement, transaction or dispute;
    # invariant 5 checks that each line's statement, transaction and dispute exist and agree.
    statement_id: Mapped[str] = mapped_column(ID)
    transaction_id: Mapped[str | None] = mapped_column(ID)
    dispute_id: Mapped[str | None] = mapped_column(ID)
    kind: Mapped[str] = mapped_column(String(16))
    posted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    points: Mapped[int] = mapped_column(BigInteger)
    unit_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    prior_period: Mapped[bool] = mapped_column(Boolean)


class StatementEvent(Base):
    """A recorded status change of a statement: from, to, when, by which key."""

    __tablename__ = "statement_events"
    __table_args__ = (Index("ix_statement_events_statement", "statement_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    statement_id: Mapped[str] = mapped_column(ForeignKey("statements.id"))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    key_id: Mapped[str | None] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(String(500))


class Dispute(Base):
    """A partner's dispute of a statement; resolved by the operator, maybe with an adjustment
    (signed, in the partner's currency) billed on the partner's next statement."""

    __tablename__ = "disputes"
    __table_args__ = (
        CheckConstraint(_in("status", DISPUTE_STATUSES), name="status"),
        CheckConstraint(
            "(status = 'resolved') = (resolved_at IS NOT NULL AND outcome IS NOT NULL)",
            name="resolution",
        ),
        CheckConstraint(
            "adjustment_minor IS NULL OR (status = 'resolved' AND adjustment_minor <> 0)",
            name="adjustment",
        ),
        Index("ix_disputes_statement", "statement_id"),
        Index("ix_disputes_partner", "partner_id", "id"),
        Index(
            "ix_disputes_adjustments",
            "partner_id",
            "resolved_at",
            postgresql_where=text("adjustment_minor IS NOT NULL"),
            sqlite_where=text("adjustment_minor IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    statement_id: Mapped[str] = mapped_column(ForeignKey("statements.id"))
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    reason: Mapped[str] = mapped_column(String(2000))
    #: The disputed lines' transaction ids, space-separated (each on the statement).
    transaction_ids: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by_key: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str | None] = mapped_column(String(24))
    resolution_note: Mapped[str | None] = mapped_column(String(2000))
    adjustment_minor: Mapped[int | None] = mapped_column(BigInteger)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by_key: Mapped[str | None] = mapped_column(String(64))


class SigningKey(Base):
    """An Ed25519 statement-signing key; the private half sealed under COALITION_SECRET_KEY.

    The newest key signs; older ones stay, so every statement they signed stays verifiable.
    """

    __tablename__ = "signing_keys"
    __table_args__ = (Index("uq_signing_keys_generation", "generation", unique=True),)

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: 1 for the key ``coalition init`` made, +1 per rotation; the highest signs.
    generation: Mapped[int] = mapped_column(Integer)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    private_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
