"""Idempotency records: the first response to a ``POST`` kept per (owner, Idempotency-Key).

The store's logic lives with the API's use of it (api/idempotency.py); this is its table.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from coalition.db import Base, UTCDateTime


class IdempotencyRecord(Base):
    """One idempotency key of one owner: claimed (``running``) then ``done`` with its response.

    A claim whose ``locked_until`` has passed without completing (the process died before its
    transaction committed, so nothing happened) may be claimed again.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        CheckConstraint("state IN ('running', 'done')", name="state"),
        Index("ix_idempotency_keys_expires", "expires_at"),
    )

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(2048))
    state: Mapped[str] = mapped_column(String(8))
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    locked_until: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
