"""The partners' tables: partners, versioned rate cards, API keys."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint, ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from coalition.db import Base, ExactDecimal, UTCDateTime
from coalition.models import ID

PARTNER_STATUSES = ("active", "suspended")
KEY_ROLES = ("partner", "operator", "finance")
KEY_ALGS = ("hmac-sha256", "ed25519")
PARTNER_SCOPES = ("earn", "burn", "read", "webhooks", "statements")


class Partner(Base):
    """A brand in the coalition; it settles with the operator in its own currency."""

    __tablename__ = "partners"
    __table_args__ = (CheckConstraint("status IN ('active', 'suspended')", name="status"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))
    issued_account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), unique=True)
    redeemed_account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RateCard(Base):
    """A version of a partner's rates, in force from ``effective_from``; never edited."""

    __tablename__ = "rate_cards"
    __table_args__ = (
        Index("uq_rate_cards_partner_effective", "partner_id", "effective_from", unique=True),
        CheckConstraint(
            "CAST(earn_points_per_unit AS NUMERIC) >= 0"
            " AND CAST(issue_price_per_point AS NUMERIC) >= 0"
            " AND CAST(burn_value_per_point AS NUMERIC) > 0"
            " AND CAST(reimburse_price_per_point AS NUMERIC) >= 0"
            " AND (max_burn_share IS NULL OR (CAST(max_burn_share AS NUMERIC) > 0"
            " AND CAST(max_burn_share AS NUMERIC) <= 1))",
            name="rates_in_range",
        ),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    effective_from: Mapped[datetime] = mapped_column(UTCDateTime)
    earn_points_per_unit: Mapped[Decimal] = mapped_column(ExactDecimal)
    issue_price_per_point: Mapped[Decimal] = mapped_column(ExactDecimal)
    burn_value_per_point: Mapped[Decimal] = mapped_column(ExactDecimal)
    reimburse_price_per_point: Mapped[Decimal] = mapped_column(ExactDecimal)
    max_burn_share: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiKey(Base):
    """A key that signs requests: a partner's (with scopes), an operator's or finance's.

    An hmac key's secret is stored sealed (AES-GCM under COALITION_SECRET_KEY), never plain;
    an ed25519 key stores only the partner's public key.
    """

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("role IN ('partner', 'operator', 'finance')", name="role"),
        CheckConstraint("(role = 'partner') = (partner_id IS NOT NULL)", name="partner_keys"),
        CheckConstraint(
            "(alg = 'hmac-sha256' AND secret_sealed IS NOT NULL AND public_key IS NULL)"
            " OR (alg = 'ed25519' AND public_key IS NOT NULL AND secret_sealed IS NULL)",
            name="alg_material",
        ),
        Index("ix_api_keys_partner", "partner_id"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    partner_id: Mapped[str | None] = mapped_column(ForeignKey("partners.id"))
    alg: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[str] = mapped_column(String(200))
    secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    public_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RequestNonce(Base):
    """A signature ``nonce`` seen for a key, kept until the signature could no longer verify."""

    __tablename__ = "request_nonces"
    __table_args__ = (Index("ix_request_nonces_expires", "expires_at"),)

    #: No foreign key: every signed request writes one of these, and a key's check locked the
    #: key's row per insert (migration 0017, docs/invariants.md "Foreign keys").
    key_id: Mapped[str] = mapped_column(ID, primary_key=True)
    nonce: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
