"""Nonces remembered per key while their signature could verify (``request_nonces``).

A nonce is remembered until its signature stops verifying, plus :data:`NONCE_MARGIN`, so
that clock differences between API processes and the purge job cannot reopen the window.
One statement remembers it: ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` the old row has
expired ``... RETURNING``. Two concurrent requests with the same nonce: PostgreSQL makes the
second wait for the first's transaction, then finds the row (no row returned): exactly one
succeeds. An expired row not yet purged is taken over, so only the window counts. On
PostgreSQL the statement can also ride in front of a request's first statement
(:func:`prelude`: a POST's Idempotency-Key claim).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, select, text, tuple_
from sqlalchemy import insert as portable_insert
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coalition.db import dialect_of
from coalition.hot import HotStatement, Prelude
from partners.models import RequestNonce
from partners.signatures.refusals import fail

#: A nonce is kept this long after its signature stops verifying.
NONCE_MARGIN = timedelta(seconds=60)
#: The longest nonce the request_nonces table holds.
MAX_NONCE_LENGTH = 255
#: Nonces one purge statement deletes.
NONCE_PURGE_BATCH = 10_000

_NONCES = cast("Table", RequestNonce.__table__)


def _record_nonce_statement(insert: Any) -> Any:
    stmt = insert(_NONCES).values(
        key_id=bindparam("key_id"), nonce=bindparam("nonce"), expires_at=bindparam("expires_at")
    )
    return stmt.on_conflict_do_update(
        index_elements=[_NONCES.c.key_id, _NONCES.c.nonce],
        set_={"expires_at": stmt.excluded.expires_at},
        where=_NONCES.c.expires_at < bindparam("nonce_now"),
    ).returning(_NONCES.c.key_id)


#: The statement on PostgreSQL, as text: on its own here, or in front of a request's first
#: statement (:func:`prelude`).
_RECORD_NONCE_SQL = (
    "INSERT INTO request_nonces (key_id, nonce, expires_at) VALUES (:key_id, :nonce, :expires_at)"
    " ON CONFLICT (key_id, nonce) DO UPDATE SET expires_at = excluded.expires_at"
    " WHERE request_nonces.expires_at < :nonce_now RETURNING key_id"
)
# Pre-built per dialect, on the table (not the ORM entity): building the statement on every
# request cost more than running it.
_RECORD_NONCE = {
    "postgresql": HotStatement(text(_RECORD_NONCE_SQL)),
    "sqlite": HotStatement(_record_nonce_statement(sqlite.insert)),
}


def _values(key_id: str, nonce: str, verifies_until: datetime) -> dict[str, Any]:
    return {"key_id": key_id, "nonce": nonce, "expires_at": verifies_until + NONCE_MARGIN}


def remember(
    session: Session, key_id: str, nonce: str, *, verifies_until: datetime, now: datetime
) -> bool:
    """Remember ``nonce`` for the key until its signature stops verifying (and the margin);
    False if it is already remembered (a replay)."""
    values = _values(key_id, nonce, verifies_until)
    stmt = _RECORD_NONCE.get(dialect_of(session))
    if stmt is None:  # another dialect: the primary key, inside a savepoint
        try:
            with session.begin_nested():
                session.execute(portable_insert(RequestNonce).values(**values))
        except IntegrityError:
            return False
        return True
    return stmt.first(session, {**values, "nonce_now": now}) is not None


def use(
    session: Session, key_id: str, nonce: str, *, verifies_until: datetime, now: datetime
) -> None:
    """:func:`remember`, refusing a replay (``replayed-nonce``)."""
    if not remember(session, key_id, nonce, verifies_until=verifies_until, now=now):
        raise _replayed(key_id)


def prelude(key_id: str, nonce: str, *, verifies_until: datetime, now: datetime) -> Prelude:
    """:func:`use` as the write a request's first statement makes in its own round trip."""

    def settle(_: Session | None, written: int) -> None:
        if not written:
            raise _replayed(key_id)

    alone: Callable[[Session], None] = partial(
        use, key_id=key_id, nonce=nonce, verifies_until=verifies_until, now=now
    )
    return Prelude(
        _RECORD_NONCE_SQL,
        {**_values(key_id, nonce, verifies_until), "nonce_now": now},
        settle,
        alone,
        _FORGET,
    )


#: A nonce taken back: the request that wrote it on its own was refused after it.
_FORGET = HotStatement(
    delete(_NONCES).where(
        _NONCES.c.key_id == bindparam("key_id"), _NONCES.c.nonce == bindparam("nonce")
    )
)


def _replayed(key_id: str) -> Exception:
    return fail("replayed-nonce", f"nonce already used with key {key_id}")


def purge_nonces(session: Session, now: datetime, batch: int = NONCE_PURGE_BATCH) -> int:
    """Delete up to ``batch`` remembered nonces whose window has passed; the number deleted
    (a scheduled job, which calls it until a batch comes back short)."""
    due = select(_NONCES.c.key_id, _NONCES.c.nonce).where(_NONCES.c.expires_at < now).limit(batch)
    result = session.execute(
        delete(_NONCES).where(tuple_(_NONCES.c.key_id, _NONCES.c.nonce).in_(due))
    )
    return int(getattr(result, "rowcount", 0))
