"""The webhook tables: a partner's endpoints, the events written for them (the outbox), one
delivery per event and endpoint, and each attempt of a delivery (docs/webhooks.md).

Cost at 100 million events: ``webhook_deliveries`` is read by the dispatcher through the
partial index on ``next_attempt_at`` of pending rows only, so delivered rows cost it nothing;
endpoints are read by ``partner_id``.
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
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from coalition.db import Base, UTCDateTime
from coalition.models import ID, BigId


class DeliveryStatus(StrEnum):
    """Where a delivery stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


DELIVERY_STATUSES = tuple(s.value for s in DeliveryStatus)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class WebhookEndpoint(Base):
    """A partner's webhook endpoint. ``events``: the subscribed types, space separated (NULL:
    all). The secrets are sealed (AES-GCM under ``COALITION_SECRET_KEY``, bound to the id);
    during a rotation the previous secret signs alongside until ``previous_expires_at``."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        Index("ix_webhook_endpoints_partner_id", "partner_id", "id"),
        CheckConstraint(
            "(previous_secret_sealed IS NULL) = (previous_expires_at IS NULL)",
            name="previous_secret_has_expiry",
        ),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[str | None] = mapped_column(String(1024))
    description: Mapped[str | None] = mapped_column(String(500))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    previous_secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    previous_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Since when every attempt to it has failed (NULL: its last attempt succeeded, or none
    #: was made); past :data:`partners.webhooks.delivery.FAILING_DISABLES_AFTER` the
    #: dispatcher disables it.
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    def subscribed(self) -> list[str] | None:
        """The subscribed event types (None: all of them)."""
        return None if self.events is None else self.events.split()


class WebhookEvent(Base):
    """An event: ``payload`` is the exact JSON body sent (``id``, ``type``, ``created_at``,
    ``data``), the same bytes on every attempt; ``NULL`` for a ledger transaction's event, whose
    body is rendered from the transaction's row when sent (``partners.webhooks.outbox
    .sent_body``, docs/architecture.md decision 28)."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        Index("ix_webhook_events_partner_id", "partner_id", "id"),
        Index("ix_webhook_events_created_at", "created_at"),
        CheckConstraint("payload IS NOT NULL OR transaction_id IS NOT NULL", name="has_body"),
        # a ledger transaction has at most one event (invariant 6)
        Index(
            "uq_webhook_events_transaction_id",
            "transaction_id",
            unique=True,
            postgresql_where=text("transaction_id IS NOT NULL"),
            sqlite_where=text("transaction_id IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    #: No foreign key to the partner (migration 0019, docs/invariants.md): checked instead.
    partner_id: Mapped[str] = mapped_column(ID)
    payload: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The ledger transaction a ``transaction.*`` event describes.
    transaction_id: Mapped[str | None] = mapped_column(ForeignKey("transactions.id"))


class WebhookDelivery(Base):
    """One event to one endpoint: ``pending`` until a 2xx (``delivered``) or the retry
    schedule is spent or the endpoint refuses for good (``failed``)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(_in("status", DELIVERY_STATUSES), name="status"),
        CheckConstraint(
            "(status = 'pending') = (next_attempt_at IS NOT NULL)", name="pending_has_next"
        ),
        CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        Index("ix_webhook_deliveries_endpoint_id", "endpoint_id", "id"),
        # the webhook-health view's counts: an endpoint's deliveries not delivered
        Index(
            "ix_webhook_deliveries_endpoint_open",
            "endpoint_id",
            postgresql_where=text("status <> 'delivered'"),
            sqlite_where=text("status <> 'delivered'"),
        ),
        Index("ix_webhook_deliveries_event_id", "event_id"),
        # the purge's way to what is done (delivered or failed), oldest first
        Index(
            "ix_webhook_deliveries_done",
            "created_at",
            postgresql_where=text("status <> 'pending'"),
            sqlite_where=text("status <> 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    #: No foreign keys to the event and the endpoint (migration 0019, docs/invariants.md):
    #: checked instead; an endpoint's deletion deletes its deliveries itself.
    event_id: Mapped[str] = mapped_column(ID)
    endpoint_id: Mapped[str] = mapped_column(ID)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_latency_ms: Mapped[int | None] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(String(500))
    last_response: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebhookAttempt(Base):
    """One attempt of a delivery, as the dispatcher recorded it: the HTTP status (NULL when no
    answer came), the latency, the error, a capped excerpt of the response body. Deleted with
    its delivery."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery_id", "delivery_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    attempt: Mapped[int] = mapped_column(Integer)
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(String(500))
    response_excerpt: Mapped[str | None] = mapped_column(String(1024))
