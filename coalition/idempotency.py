"""Idempotency records: the first response to a ``POST`` kept per (owner, Idempotency-Key).

This is the table and its store (claim, lookup, save, purge, and the claim and the save as
they ride an operation's own statements on PostgreSQL: :func:`claim_lead`, :func:`kept_rider`,
docs/architecture.md decision 28); the HTTP side of it (the header, the request hash,
replays) is api/idempotency.py.

A response is kept either whole (``response_body``) or, when it is a ledger transaction in the
contract's shape, as the id of that transaction (``response_transaction_id``): the row is
immutable, so the layer that rendered the first response renders the replay from it, byte for
byte (docs/architecture.md, decision 25), and the row an earn writes is about a third the size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    CheckConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    bindparam,
    delete,
    insert,
    select,
    text,
    tuple_,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from coalition.db import Base, UTCDateTime, dialect_of
from coalition.errors import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InvariantViolated,
    invariant,
)
from coalition.hot import HotStatement, Lead, Prelude
from coalition.ledger.post import Header
from coalition.ledger.riders import Rider


class IdempotencyRecord(Base):
    """The first response to one idempotency key of one owner, kept :data:`RETENTION`.

    Rows are written with their response (its body, or the transaction it renders), in the
    transaction of the operation they answer. ``request_hash`` is the request's SHA-256, its 32
    bytes.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        CheckConstraint(
            "response_body IS NULL OR response_transaction_id IS NULL", name="one_response"
        ),
        Index("ix_idempotency_keys_expires", "expires_at"),
    )

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(2048))
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: The transaction whose rendering the response is, instead of its body.
    response_transaction_id: Mapped[str | None] = mapped_column(String(40))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


# --- the store: claim (exclusion and lookup), save, purge --------------------------------
#
# "Never two effects", also across a crash, and no lease to wait out: a request takes the
# key's exclusion *inside its operation's own transaction* (on PostgreSQL a transaction-scoped
# advisory lock on a hash of owner and key, taken without waiting), looks for the first
# response, and if there is none runs the operation and saves its response in that same
# transaction. The database releases the exclusion with everything else when the transaction
# ends: at commit, at rollback, or when the process holding it dies (its connection closes). So
# a duplicate hears ``409 idempotency-key-in-use`` only while the first is really running, and
# a retry after a crash runs at once. The primary key (owner, key) backs the lock: two saves
# of one key can never both commit. SQLite has one writer at a time (BEGIN IMMEDIATE), which is
# the exclusion there.

#: How long a stored response is kept (the contract: at least 24 hours).
RETENTION = timedelta(hours=24)
#: Rows one purge statement deletes.
PURGE_BATCH = 1000
#: Purge statements one run of the purge job makes at most.
PURGE_BATCHES_PER_RUN = 100
#: What a duplicate is told to wait before it tries again.
IN_USE_RETRY_AFTER_S = 1
#: How long a duplicate waits for the first request before it is told ``in-use`` (only when
#: the key is held: the common case takes the lock at once), in growing pauses.
_IN_USE_PAUSES_S = (0.01, 0.02, 0.04, 0.08)
IN_USE_PATIENCE_S = sum(_IN_USE_PAUSES_S)

# Core statements on the table, built once: the ORM-enabled forms cost several times more
# Python per request than running them.
_TABLE = cast("Table", IdempotencyRecord.__table__)
_COLUMNS = (
    _TABLE.c.request_hash,
    _TABLE.c.method,
    _TABLE.c.path,
    _TABLE.c.response_status,
    _TABLE.c.response_body,
    _TABLE.c.response_transaction_id,
    _TABLE.c.expires_at,
)
_LOOKUP = HotStatement(
    select(*_COLUMNS).where(_TABLE.c.owner == bindparam("owner"), _TABLE.c.key == bindparam("key"))
)
_SAVE = HotStatement(
    insert(_TABLE).values(
        {column.key: bindparam(column.key) for column in _TABLE.c}  # every column, by name
    )
)


@dataclass(frozen=True, slots=True)
class SaveRider:
    """Writes a transaction noted for its commit that may go out instead in the statement that
    stores the request's response (PostgreSQL), as data-modifying CTEs in front of its
    ``INSERT``: no statement of their own. The layer that notes them defines it (the webhook
    outbox's ``partners.webhooks.outbox.RIDER``) and the API passes it to :func:`save`.

    ``ctes`` is ``name AS (...), ...`` with its own ``:named`` parameters (none named as a
    column of the record); ``take`` returns the values of what the session noted, taken out of
    its commit-time write, or ``None`` when there is nothing to carry (it is written at commit).
    """

    ctes: str
    take: Callable[[Session], dict[str, Any] | None]


#: The statements composed of a layer's SQL (a prelude's write, a rider's CTEs) and one of the
#: store's, by (that SQL, the store's template): each built once.
_COMPOSED: dict[tuple[str, str], HotStatement] = {}


def _composed(part: str, template: str) -> HotStatement:
    """``template`` with ``part`` in place of ``{part}``, as a statement built once."""
    statement = _COMPOSED.get((part, template))
    if statement is None:
        statement = _COMPOSED[part, template] = HotStatement(text(template.replace("{part}", part)))
    return statement


#: The save preceded by a rider's CTEs.
_SAVE_WITH = (
    "WITH {part} INSERT INTO idempotency_keys"  # noqa: S608 (built from constants)
    f" ({', '.join(c.name for c in _TABLE.c)})"
    f" VALUES ({', '.join(':' + c.key for c in _TABLE.c)})"
)


# PostgreSQL: the key's exclusion and its first response in one round trip. The row is read
# with the statement's snapshot, taken before the lock: a first request that commits in
# between (releasing the lock to this one) is not seen, this one runs the operation too, and
# the primary key refuses its save (an IntegrityError: the request runs again and replays).
_CLAIM_SQL = """
    SELECT held.locked, r.request_hash, r.method, r.path, r.response_status,
        r.response_body, r.response_transaction_id, r.expires_at
    FROM (SELECT pg_try_advisory_xact_lock(hashtextextended(:lock, 0)) AS locked) AS held
    LEFT JOIN idempotency_keys AS r ON held.locked AND r.owner = :owner AND r.key = :key
"""
_CLAIM = HotStatement(text(_CLAIM_SQL))


#: The claim after a prelude's write (in a CTE ``written``), with its count in front.
_CLAIM_WRITTEN = (
    f"SELECT (SELECT count(*) FROM written) AS written, claimed.* FROM ({_CLAIM_SQL}) AS claimed"  # noqa: S608 (built from constants)
)
#: The claim preceded by a prelude's write.
_CLAIM_AFTER = f"WITH written AS ({{part}}) {_CLAIM_WRITTEN}"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The first response to the key: replay it. Its ``body``, or ``None`` when it is the
    rendering of the transaction ``transaction_id`` (the layer that rendered it renders it
    again)."""

    status: int
    body: bytes | None
    transaction_id: str | None = None


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0))


def claim(
    session: Session,
    *,
    owner: str,
    key: str,
    request_hash: bytes,
    now: datetime,
    prelude: Prelude | None = None,
) -> StoredResponse | None:
    """Hold ``key`` of ``owner`` until this transaction ends, and the first response to it
    (:func:`lookup`), after the ``prelude``'s write if any. :class:`IdempotencyKeyInUse` if
    another running transaction still holds it after :data:`IN_USE_PATIENCE_S` (a first
    request about to finish then answers the second with its replay; a holder that just died
    has had time to be noticed by the server)."""
    if dialect_of(session) != "postgresql":
        # one writer at a time: this transaction is the only one
        if prelude is not None:
            prelude.alone(session)
        return lookup(session, owner=owner, key=key, request_hash=request_hash, now=now)
    params = {"lock": f"{owner}\n{key}", "owner": owner, "key": key}
    for pause_s in (*_IN_USE_PAUSES_S, None):
        if prelude is not None:
            row = _one_row(
                _composed(prelude.sql, _CLAIM_AFTER).first(session, {**prelude.params, **params})
            )
            prelude.settle(session, int(row[0]))
            prelude, row = None, row[1:]
        else:
            row = _one_row(_CLAIM.first(session, params))
        if row[0]:
            return _stored(
                session, row[1:], owner=owner, key=key, request_hash=request_hash, now=now
            )
        if pause_s is not None:
            time.sleep(pause_s)
    raise IdempotencyKeyInUse(
        f"a request with Idempotency-Key {key!r} is still running; retry in a moment",
        retry_after_s=IN_USE_RETRY_AFTER_S,
    )


class Answered(Exception):
    """The key's first response exists: the request replays it (what a :func:`claim_lead`
    stops the operation with)."""

    def __init__(self, stored: StoredResponse) -> None:
        super().__init__(stored)
        self.stored = stored


def claim_lead(
    *, owner: str, key: str, request_hash: bytes, now: datetime, prelude: Prelude | None
) -> Lead:
    """:func:`claim` as a :class:`~coalition.hot.Lead` (PostgreSQL): sent in front of the
    operation's first read, in its round trip. Its settle lets the operation go on when the key
    is new; raises :class:`Answered` with the first response to replay, the ``prelude``'s
    refusal, or :func:`claim`'s (which it waits with when another transaction holds the key)."""
    params = {"lock": f"{owner}\n{key}", "owner": owner, "key": key}

    def settle(session: Session, row: Sequence[Any]) -> None:
        if prelude is not None:
            prelude.settle(session, int(row[0]))
            row = row[1:]
        if row[0]:
            found = _stored(
                session, row[1:], owner=owner, key=key, request_hash=request_hash, now=now
            )
        else:
            found = claim(session, owner=owner, key=key, request_hash=request_hash, now=now)
        if found is not None:
            raise Answered(found)

    if prelude is None:
        return Lead("", _CLAIM_SQL, len(_COLUMNS) + 1, params, settle)
    ctes = f"written AS ({prelude.sql})"
    return Lead(ctes, _CLAIM_WRITTEN, len(_COLUMNS) + 2, {**prelude.params, **params}, settle)


def _one_row(row: Sequence[Any] | None) -> Sequence[Any]:
    """The claim's one row (its ``SELECT`` has no condition that could leave it out)."""
    if row is None:
        raise InvariantViolated("the Idempotency-Key claim returned no row")
    return row


def lookup(
    session: Session, *, owner: str, key: str, request_hash: bytes, now: datetime
) -> StoredResponse | None:
    """The first response to ``key`` (to replay), or ``None`` when the key is new (or was
    kept its retention and is forgotten). :class:`IdempotencyKeyReused` when the key was used
    with another request. :func:`claim` is this with the key's exclusion."""
    row = _LOOKUP.first(session, {"owner": owner, "key": key})
    return _stored(session, row, owner=owner, key=key, request_hash=request_hash, now=now)


def _stored(
    session: Session,
    row: Sequence[Any] | None,
    *,
    owner: str,
    key: str,
    request_hash: bytes,
    now: datetime,
) -> StoredResponse | None:
    if row is None or row[0] is None:
        return None
    stored_hash, method, path, status, body, transaction_id, expires_at = row
    if expires_at <= now:  # kept long enough and forgotten: the key is new again
        session.execute(
            delete(IdempotencyRecord)
            .where(IdempotencyRecord.owner == owner, IdempotencyRecord.key == key)
            .execution_options(synchronize_session=False)
        )
        return None
    if stored_hash != request_hash:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key!r} was already used with a different request "
            f"(to {method} {path})"
        )
    return StoredResponse(status, None if body is None else bytes(body), transaction_id)


def save(
    session: Session,
    *,
    owner: str,
    key: str,
    request_hash: bytes,
    method: str,
    path: str,
    status: int,
    body: bytes | None,
    now: datetime,
    transaction_id: str | None = None,
    rider: SaveRider | None = None,
) -> None:
    """Store the first response to ``key``, in the transaction of the operation it answers
    (after :func:`lookup` found none): its ``body``, or (``body`` ``None``) the id of the
    transaction it renders. The primary key refuses a second row. On PostgreSQL what
    the ``rider`` takes from the session (the one webhook event the operation noted) goes out
    in the same statement.
    """
    invariant(
        (body is None) != (transaction_id is None), "a stored response is a body or a transaction"
    )
    values = {
        "request_hash": request_hash,
        "method": method,
        "path": path,
        "response_status": status,
        "response_body": body,
        "response_transaction_id": transaction_id,
        "expires_at": now + RETENTION,
    }
    values = {"owner": owner, "key": key, **values}
    if rider is not None and dialect_of(session) == "postgresql":
        carried = rider.take(session)
        if carried is not None:
            _composed(rider.ctes, _SAVE_WITH).rows(session, {**carried, **values})
            return
    _SAVE.rows(session, values)


#: The stored response of a request answered by the transaction it posts, riding the
#: statement that writes the transaction (``t``: :mod:`coalition.ledger.riders`).
#: What it writes in each column: the request's values (``:kept_<column>``), no body, the
#: transaction's id.
_KEPT_VALUES = {column.key: f":kept_{column.key}" for column in _TABLE.c} | {
    "response_body": "NULL",
    "response_transaction_id": "t.id",
}
_KEPT_CTES = (
    "kept AS (INSERT INTO idempotency_keys"  # noqa: S608 (built from constants)
    f" ({', '.join(c.name for c in _TABLE.c)})"
    f" SELECT {', '.join(_KEPT_VALUES[c.key] for c in _TABLE.c)} FROM t)"
)
#: ``Session.info`` key: the transaction whose statement carried the stored response.
_KEPT = "coalition_kept_with"


def kept_rider(
    *, owner: str, key: str, request_hash: bytes, method: str, path: str, status: int, now: datetime
) -> Rider:
    """:func:`save` of the response ``status`` rendering the transaction the request posts,
    as a :class:`~coalition.ledger.riders.Rider` of the statement that writes it (PostgreSQL):
    :func:`kept_with` then names that transaction."""
    values = {
        "kept_owner": owner,
        "kept_key": key,
        "kept_request_hash": request_hash,
        "kept_method": method,
        "kept_path": path,
        "kept_response_status": status,
        "kept_expires_at": now + RETENTION,
    }

    def carried(session: Session, header: Header) -> None:
        session.info[_KEPT] = header.id

    return Rider(_KEPT_CTES, lambda _header: values, carried)


def kept_with(session: Session) -> str | None:
    """The transaction whose statement stored the response (:func:`kept_rider`), if one did."""
    found: str | None = session.info.pop(_KEPT, None)
    return found


def purge(session: Session, now: datetime, batch: int = PURGE_BATCH) -> int:
    """Delete up to ``batch`` records past their retention; how many."""
    due = (
        select(IdempotencyRecord.owner, IdempotencyRecord.key)
        .where(IdempotencyRecord.expires_at <= now)
        .limit(batch)
    )
    result = session.execute(
        delete(IdempotencyRecord)
        .where(tuple_(IdempotencyRecord.owner, IdempotencyRecord.key).in_(due))
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result)
