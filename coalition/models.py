"""The kernel's tables: accounts, members, and the append-only points ledger.

Shape and cost at 100 million transactions (see docs/invariants.md and docs/operations.md):
- ``transactions`` (transfers: each names the account it debits and the one it credits) and
  ``lot_movements`` are append-only; database triggers refuse UPDATE and DELETE. A correction
  is a new transaction that ``reverses`` another.
- Member rows hold the only balances updated in place (``balance`` and ``held``); partner
  totals are aggregates over transfers, computed at settlement, so no hot row per partner
  exists.
- Lots carry ``remaining``; every change to it is a ``lot_movements`` row, so
  ``remaining = points + sum(movements)`` is checkable forever.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from coalition.db import Base, UTCDateTime
from coalition.ids import MEMBER_ID_MAX_LENGTH

#: A 64-bit integer primary key that autoincrements on PostgreSQL and SQLite alike.
BigId = BigInteger().with_variant(Integer(), "sqlite")

ID = String(40)


class TransactionKind(StrEnum):
    """What a ledger transaction is (the contract's ``kind``)."""

    EARN = "earn"
    BURN = "burn"
    EARN_REVERSAL = "earn_reversal"
    BURN_REVERSAL = "burn_reversal"
    BONUS = "bonus"
    ADJUSTMENT = "adjustment"
    EXPIRY = "expiry"


class HoldStatus(StrEnum):
    """Where a hold stands (the contract's ``status``)."""

    ACTIVE = "active"
    CAPTURED = "captured"
    VOIDED = "voided"
    EXPIRED = "expired"


class AccountKind(StrEnum):
    """Whose points an account holds."""

    MEMBER = "member"
    PARTNER_ISSUED = "partner_issued"
    PARTNER_REDEEMED = "partner_redeemed"
    OPERATOR_BONUS = "operator_bonus"
    OPERATOR_BREAKAGE = "operator_breakage"
    OPERATOR_ADJUSTMENT = "operator_adjustment"


TRANSACTION_KINDS = tuple(k.value for k in TransactionKind)
HOLD_STATUSES = tuple(s.value for s in HoldStatus)
ACCOUNT_KINDS = tuple(k.value for k in AccountKind)
#: The operator's accounts have fixed ids, created by the first migration.
OPERATOR_ACCOUNTS = {"operator_bonus": 1, "operator_breakage": 2, "operator_adjustment": 3}


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Account(Base):
    """One side of a transfer: a member, a partner's issued or redeemed points, or the operator."""

    __tablename__ = "accounts"
    __table_args__ = (CheckConstraint(_in("kind", ACCOUNT_KINDS), name="kind"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(24))


class Member(Base):
    """A member of the coalition; ``balance`` and ``held`` are kept in place under a row lock."""

    __tablename__ = "members"
    __table_args__ = (CheckConstraint("held >= 0", name="held_not_negative"),)

    id: Mapped[str] = mapped_column(String(MEMBER_ID_MAX_LENGTH), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), unique=True)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    held: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The tier basis (``coalition.ledger.tiers``): the qualifying points (earns less earn
    #: reversals) of the UTC days ``tier_since_day`` to ``tier_day`` (days since 1970-01-01),
    #: ``tier_day`` the day of the member's latest one (NULL: none yet). Kept by the write
    #: that changes the balance, in the same UPDATE.
    tier_day: Mapped[int | None] = mapped_column(Integer)
    tier_since_day: Mapped[int | None] = mapped_column(Integer)
    tier_points: Mapped[int] = mapped_column(BigInteger, server_default="0")


class Transaction(Base):
    """One ledger transaction, a transfer: it moves its ``points`` (positive) from the account
    it debits to the account it credits, two different accounts, so it balances by
    construction. Never updated, never deleted. The two accounts have no foreign key (a
    partner's account is a hot parent row); ``coalition check`` verifies them instead."""

    __tablename__ = "transactions"
    __table_args__ = (
        CheckConstraint(_in("kind", TRANSACTION_KINDS), name="kind"),
        CheckConstraint("points > 0", name="points_positive"),
        CheckConstraint("debit_account_id <> credit_account_id", name="two_accounts"),
        CheckConstraint("overdraft_points >= 0", name="overdraft_not_negative"),
        CheckConstraint("(amount_minor IS NULL) = (currency IS NULL)", name="amount_has_currency"),
        # `reference` is unique per partner and operation; a hold's capture carries the
        # hold's reference and is unique through the hold instead.
        Index(
            "uq_transactions_partner_kind_reference",
            "partner_id",
            "kind",
            "reference",
            unique=True,
            postgresql_where=text("reference IS NOT NULL AND hold_id IS NULL"),
            sqlite_where=text("reference IS NOT NULL AND hold_id IS NULL"),
        ),
        Index("ix_transactions_partner_id", "partner_id", "id"),
        Index("ix_transactions_member_occurred", "member_id", "occurred_at"),
        Index(
            "ix_transactions_reverses",
            "reverses",
            postgresql_where=text("reverses IS NOT NULL"),
            sqlite_where=text("reverses IS NOT NULL"),
        ),
        Index("ix_transactions_posted", "posted_at"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    partner_id: Mapped[str | None] = mapped_column(ID)
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"))
    reference: Mapped[str | None] = mapped_column(String(255))
    points: Mapped[int] = mapped_column(BigInteger)
    amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(3))
    rate_card_id: Mapped[str | None] = mapped_column(ID)
    tier: Mapped[str | None] = mapped_column(String(32))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    posted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reverses: Mapped[str | None] = mapped_column(ForeignKey("transactions.id"))
    hold_id: Mapped[str | None] = mapped_column(ForeignKey("holds.id"))
    balance_after: Mapped[int] = mapped_column(BigInteger)
    # Points an earn reversal took beyond what the member had available (a clawback of
    # points already spent or held): the only way a member's available goes below zero.
    overdraft_points: Mapped[int] = mapped_column(BigInteger, default=0)
    reason: Mapped[str | None] = mapped_column(String(500))
    debit_account_id: Mapped[int] = mapped_column(BigId)
    credit_account_id: Mapped[int] = mapped_column(BigId)


class Lot(Base):
    """Points a member received together, with their origin partner and expiry.

    A member with a clawback deficit has one deficit lot (``is_deficit``, ``remaining < 0``,
    no expiry); the next points credited fill it first, so a deficit and positive lots never
    stand side by side and ``balance = sum(remaining)`` always holds.
    """

    __tablename__ = "lots"
    __table_args__ = (
        CheckConstraint(
            "(is_deficit AND points = 0 AND remaining <= 0 AND expires_at IS NULL"
            " AND origin_partner_id IS NULL)"
            " OR (NOT is_deficit AND remaining >= 0 AND remaining <= points"
            " AND expires_at IS NOT NULL)",
            name="remaining_in_range",
        ),
        Index(
            "ix_lots_member_open",
            "member_id",
            "expires_at",
            "id",
            postgresql_where=text("remaining > 0"),
            sqlite_where=text("remaining > 0"),
        ),
        Index(
            "ix_lots_expiring",
            "expires_at",
            postgresql_where=text("remaining > 0"),
            sqlite_where=text("remaining > 0"),
        ),
        Index(
            "uq_lots_member_deficit",
            "member_id",
            unique=True,
            postgresql_where=text("is_deficit"),
            sqlite_where=text("is_deficit"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"))
    origin_partner_id: Mapped[str | None] = mapped_column(ID)
    transaction_id: Mapped[str] = mapped_column(ForeignKey("transactions.id"))
    points: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    is_deficit: Mapped[bool] = mapped_column(Boolean, default=False)


class LotMovement(Base):
    """A change of a lot's ``remaining`` by a transaction (negative: points taken from it).

    ``origin_partner_id`` is copied from the lot so that the cross-brand matrix (which
    partner issued the points burned where) is one aggregate over this table.
    """

    __tablename__ = "lot_movements"
    __table_args__ = (
        CheckConstraint("points <> 0", name="points_nonzero"),
        Index("ix_lot_movements_transaction", "transaction_id"),
        Index("ix_lot_movements_lot", "lot_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    transaction_id: Mapped[str] = mapped_column(ForeignKey("transactions.id"))
    lot_id: Mapped[int] = mapped_column(ForeignKey("lots.id"))
    origin_partner_id: Mapped[str | None] = mapped_column(ID)
    points: Mapped[int] = mapped_column(BigInteger)


class Hold(Base):
    """Points reserved at checkout, later captured (a burn), voided or expired."""

    __tablename__ = "holds"
    __table_args__ = (
        CheckConstraint(_in("status", HOLD_STATUSES), name="status"),
        CheckConstraint("points > 0", name="points_positive"),
        CheckConstraint(
            "captured_points IS NULL OR (captured_points > 0 AND captured_points <= points)",
            name="captured_within_held",
        ),
        Index("uq_holds_partner_reference", "partner_id", "reference", unique=True),
        Index(
            "ix_holds_member_active",
            "member_id",
            postgresql_where=text("status = 'active'"),
            sqlite_where=text("status = 'active'"),
        ),
        Index(
            "ix_holds_active_expiry",
            "expires_at",
            postgresql_where=text("status = 'active'"),
            sqlite_where=text("status = 'active'"),
        ),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    partner_id: Mapped[str] = mapped_column(ID)
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"))
    reference: Mapped[str] = mapped_column(String(255))
    points: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    captured_points: Mapped[int | None] = mapped_column(BigInteger)
