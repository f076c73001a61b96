"""Idempotency records: the first response to a ``POST`` kept per (owner, Idempotency-Key).

This is the table and its store (claim, complete, release, purge); the HTTP side of it (the
header, the request hash, replays) is api/idempotency.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    CheckConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    delete,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from coalition.db import Base, UTCDateTime
from coalition.errors import IdempotencyKeyInUse, IdempotencyKeyReused


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


# --- the store: claim, complete, release, purge ------------------------------------------
#
# "Never two effects", also across a crash: a request first *claims* its key in a short
# transaction of its own (a ``running`` row with a lease), then runs its operation and
# *completes* the claim (stores the response) in one database transaction, so a committed
# effect always has its stored response. The lease is a fencing token: completing checks that
# ``locked_until`` is still the one this request set, so a request that outlived its lease and
# was taken over rolls back instead of committing a second effect.

#: How long a claim keeps others out before it may be taken over (the first request died).
LEASE = timedelta(seconds=30)
#: How long a stored response is kept (the contract: at least 24 hours).
RETENTION = timedelta(hours=24)
#: Rows one purge statement deletes.
PURGE_BATCH = 1000
_CLAIM_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Claim:
    """This request holds the key until ``locked_until`` (also its fencing token)."""

    owner: str
    key: str
    locked_until: datetime


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The first response to the key: replay it."""

    status: int
    body: bytes


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0))


def claim(
    session: Session,
    *,
    owner: str,
    key: str,
    request_hash: str,
    method: str,
    path: str,
    now: datetime,
    lease: timedelta = LEASE,
) -> Claim | StoredResponse:
    """Claim ``key`` for this request, or return the first response to replay.

    Raises :class:`IdempotencyKeyReused` when the key was used with another request and
    :class:`IdempotencyKeyInUse` while the first request still holds its lease. Run it in a
    short transaction of its own and commit before running the operation.
    """
    fresh = {
        "request_hash": request_hash,
        "method": method,
        "path": path,
        "state": "running",
        "response_status": None,
        "response_body": None,
        "created_at": now,
        "locked_until": now + lease,
        "expires_at": now + RETENTION,
    }
    this = (IdempotencyRecord.owner == owner, IdempotencyRecord.key == key)
    for _ in range(_CLAIM_ATTEMPTS):
        try:
            with session.begin_nested():
                session.execute(insert(IdempotencyRecord).values(owner=owner, key=key, **fresh))
            return Claim(owner, key, now + lease)
        except IntegrityError:
            pass  # the key exists: decide from the row
        row = session.execute(
            select(
                IdempotencyRecord.request_hash,
                IdempotencyRecord.method,
                IdempotencyRecord.path,
                IdempotencyRecord.state,
                IdempotencyRecord.response_status,
                IdempotencyRecord.response_body,
                IdempotencyRecord.locked_until,
                IdempotencyRecord.expires_at,
            ).where(*this)
        ).one_or_none()
        if row is None:
            continue  # purged meanwhile: insert again
        if row.expires_at <= now:
            # Kept long enough and forgotten: the key is new again.
            taken = session.execute(
                update(IdempotencyRecord)
                .where(*this, IdempotencyRecord.expires_at <= now)
                .values(**fresh)
                .execution_options(synchronize_session=False)
            )
            if _rowcount(taken) == 1:
                return Claim(owner, key, now + lease)
            continue
        if row.request_hash != request_hash:
            raise IdempotencyKeyReused(
                f"Idempotency-Key {key!r} was already used with a different request "
                f"(to {row.method} {row.path})"
            )
        if row.state == "done":
            assert row.response_status is not None and row.response_body is not None
            return StoredResponse(row.response_status, row.response_body)
        if row.locked_until > now:
            raise IdempotencyKeyInUse(
                f"a request with Idempotency-Key {key!r} is still running; retry later",
                retry_after_s=max(1, int((row.locked_until - now).total_seconds())),
            )
        # The first request's lease ran out without a stored response: it died before its
        # transaction committed, so nothing happened. Take the claim over (fenced).
        taken = session.execute(
            update(IdempotencyRecord)
            .where(
                *this,
                IdempotencyRecord.state == "running",
                IdempotencyRecord.locked_until == row.locked_until,
            )
            .values(locked_until=now + lease)
            .execution_options(synchronize_session=False)
        )
        if _rowcount(taken) == 1:
            return Claim(owner, key, now + lease)
    raise IdempotencyKeyInUse(f"a request with Idempotency-Key {key!r} is still running")


def complete(session: Session, held: Claim, *, status: int, body: bytes) -> bool:
    """Store the response in the operation's transaction; False if the claim was lost (the
    lease ran out and another request took it over): roll back instead of committing."""
    done = session.execute(
        update(IdempotencyRecord)
        .where(
            IdempotencyRecord.owner == held.owner,
            IdempotencyRecord.key == held.key,
            IdempotencyRecord.state == "running",
            IdempotencyRecord.locked_until == held.locked_until,
        )
        .values(state="done", response_status=status, response_body=body)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(done) == 1


def release(session: Session, held: Claim) -> None:
    """Give the key back after a failure that stored nothing (a 5xx): it may be used again."""
    session.execute(
        delete(IdempotencyRecord)
        .where(
            IdempotencyRecord.owner == held.owner,
            IdempotencyRecord.key == held.key,
            IdempotencyRecord.state == "running",
            IdempotencyRecord.locked_until == held.locked_until,
        )
        .execution_options(synchronize_session=False)
    )


def purge(session: Session, now: datetime, batch: int = PURGE_BATCH) -> int:
    """Delete up to ``batch`` records past their retention (and not running); how many."""
    due = (
        select(IdempotencyRecord.owner, IdempotencyRecord.key)
        .where(
            IdempotencyRecord.expires_at <= now,
            or_(IdempotencyRecord.state == "done", IdempotencyRecord.locked_until <= now),
        )
        .limit(batch)
    )
    result = session.execute(
        delete(IdempotencyRecord)
        .where(tuple_(IdempotencyRecord.owner, IdempotencyRecord.key).in_(due))
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result)
