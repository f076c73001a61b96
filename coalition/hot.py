"""The request path's statements: :class:`HotStatement` (a statement compiled once and run on
the driver's own cursor), and what rides a request's first statement instead of a round trip
of its own: a :class:`Prelude` (a write in front of it: the nonce) and a :class:`Lead` (a read
in front of it: the Idempotency-Key claim in front of an operation's terms read).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from sqlalchemy import Connection, CursorResult, Dialect, Engine, text
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine.interfaces import BindTyping
from sqlalchemy.orm import Session

from coalition.db import dialect_of
from coalition.errors import InvariantViolated, invariant

_HOT = "coalition_hot"


def _hot_cursor(session: Session) -> tuple[Connection, psycopg.RawCursor[Any] | None]:
    """The connection of the session's transaction and, on PostgreSQL, one psycopg cursor of
    its driver connection, both found once per transaction (a cursor per statement, and the
    session's connection lookup, were a tenth of a hot statement's Python)."""
    transaction = session.get_transaction()
    found = session.info.get(_HOT)
    if found is not None and transaction is not None and found[0] is transaction:
        return found[1], found[2]
    conn = session.connection()
    cursor = _kept_cursor(conn) if conn.dialect.name == "postgresql" else None
    session.info[_HOT] = (session.get_transaction(), conn, cursor)
    return conn, cursor


def _kept_cursor(conn: Connection) -> psycopg.RawCursor[Any]:
    """The one raw psycopg cursor of ``conn``'s driver connection, kept with it in the pool (a
    cursor holds only its last result; it is closed with its connection)."""
    driver = conn.connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise InvariantViolated(f"a PostgreSQL connection through psycopg 3, not {driver!r}")
    kept = conn.connection.info.get(_HOT)
    if kept is None or kept.connection is not driver or kept.closed:
        kept = conn.connection.info[_HOT] = psycopg.RawCursor(driver)
    return cast("psycopg.RawCursor[Any]", kept)


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A hot statement compiled once for PostgreSQL: as SQLAlchemy renders it (``%(name)s``,
    what listeners see) and as the server takes it (``$n``, with the names in their order)."""

    named: str
    raw: bytes
    order: tuple[str, ...]
    #: What the statement binds itself (listeners are shown all of it) and, of that, what is
    #: still sent as parameters (not written into ``raw``: :func:`_literals`).
    fixed: dict[str, Any]
    sent: dict[str, Any]


#: A ``%(name)s`` parameter or a ``%%`` (a literal ``%``) in SQL rendered for psycopg.
_PYFORMAT = re.compile(r"%%|%\((\w+)\)s")


def _numbered(named: str, literals: dict[str, str]) -> tuple[bytes, tuple[str, ...]]:
    """``named`` (psycopg's ``%(name)s`` style) with ``$n`` placeholders, one per name, and
    the ``literals`` written in place of theirs."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "%"
        if name in literals:
            return literals[name]
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    return _PYFORMAT.sub(number, named).encode(), tuple(order)


def _literals(fixed: dict[str, Any]) -> dict[str, str]:
    """Of the values a statement binds itself, the integers and booleans as SQL text: written
    into the statement once instead of sent and converted as parameters on every call (an
    earn's statements bind two dozen such constants). Nothing that would need quoting."""
    found = {}
    for name, value in fixed.items():
        if isinstance(value, bool):
            found[name] = "true" if value else "false"
        elif type(value) is int:
            found[name] = f"({value})" if value < 0 else str(value)
    return found


class HotStatement:
    """A statement of the request path, run on PostgreSQL as the driver runs it.

    SQLAlchemy's execution of a Core statement (the compiled-cache lookup, the parameter and
    result processing, the cursor wrapper) cost more Python than psycopg's own: per signed earn,
    a fifth of the CPU (docs/benchmarks.md). On PostgreSQL the statement is compiled once, to
    the server's ``$n`` placeholders, and each call goes to a raw psycopg cursor of the session's
    transaction with the values in their order: psycopg parses no query text (it does for a
    ``%(name)s`` query on every call when the query is over 4 KB, as an earn's are, a tenth of
    an earn's Python). psycopg prepares it server-side after a few calls, unless
    ``COALITION_DATABASE_PGBOUNCER``. Rows come back as psycopg's tuples, so
    timestamps are aware in the connection's time zone (not converted to UTC) and numerics are
    psycopg's ``Decimal``. On SQLite it runs through the session as any statement does.
    SQLAlchemy's ``before_cursor_execute`` listeners (the benchmarks' statement counters) still
    see every statement, as SQLAlchemy would have sent it (``%(name)s``, a dict).
    """

    __slots__ = ("_compiled", "statement")

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._compiled: _Compiled | None = None

    def _postgresql(self, dialect: Dialect) -> _Compiled:
        compiled = self.statement.compile(dialect=dialect)
        fixed = _fixed_values(compiled)
        literals = _literals(fixed)
        raw, order = _numbered(compiled.string, literals)
        sent = {name: value for name, value in fixed.items() if name not in literals}
        self._compiled = _Compiled(compiled.string, raw, order, fixed, sent)
        return self._compiled

    def rows(self, session: Session, params: dict[str, Any]) -> list[Any]:
        """Every row the statement returns (none for a write without ``RETURNING``)."""
        conn, cursor = _hot_cursor(session)
        if cursor is None:
            result = cast("CursorResult[Any]", session.execute(self.statement, params))
            return list(result) if result.returns_rows else []
        return self._run(conn, cursor, params)

    def alone(self, engine: Engine, params: dict[str, Any]) -> list[Any]:
        """PostgreSQL: every row of the statement run as a transaction of its own, in one round
        trip: on a pooled connection in autocommit, no ``BEGIN``, no ``COMMIT``, no session (a
        third of the Python of a one-statement transaction, and two statements less for the
        server). Only for a statement that is the whole of its transaction; SQLAlchemy's
        ``commit`` listeners are told of it as of a commit."""
        invariant(engine.dialect.name == "postgresql", "a statement alone runs on PostgreSQL")
        with engine.connect() as conn:
            cursor = _kept_cursor(conn)
            driver = cursor.connection
            driver.autocommit = True
            try:
                rows = self._run(conn, cursor, params)
            finally:
                if not driver.closed:
                    driver.autocommit = False
            if conn.dispatch.commit:
                for listener in conn.dispatch.commit:
                    listener(conn)
            return rows

    def _run(
        self, conn: Connection, cursor: psycopg.RawCursor[Any], params: dict[str, Any]
    ) -> list[Any]:
        compiled = self._compiled or self._postgresql(conn.dialect)
        if compiled.sent:
            params = {**compiled.sent, **params}
        if conn.dispatch.before_cursor_execute:
            shown = {**compiled.fixed, **params}
            for listener in conn.dispatch.before_cursor_execute:
                listener(conn, cursor, compiled.named, shown, None, False)
        try:
            cursor.execute(compiled.raw, [params[name] for name in compiled.order])
        except psycopg.Error as exc:
            # As SQLAlchemy's own execution: wrapped (IntegrityError...), a lost connection
            # invalidated.
            conn._handle_dbapi_exception(exc, compiled.named, params, cast("Any", cursor), None)
            raise
        answer = cursor.pgresult  # not ``description``: it builds a Column per column
        if answer is None or answer.status != psycopg.pq.ExecStatus.TUPLES_OK:
            return []
        return cursor.fetchall()

    def first(self, session: Session, params: dict[str, Any]) -> Any | None:
        """The first row, or ``None``."""
        rows = self.rows(session, params)
        return rows[0] if rows else None


@dataclass(frozen=True, slots=True)
class Prelude:
    """A write a request makes before its first statement (what makes a signed request
    single-use: its nonce, or its signature's first use), sent in that statement's round trip on
    PostgreSQL (the Idempotency-Key claim's, a balance read's), as a data-modifying CTE.

    ``sql`` is an ``INSERT ... RETURNING`` with its own ``:named`` parameters (``params``; none
    named as a parameter of the statement it goes in front of); ``settle`` is told how many rows
    it returned and raises to refuse the request (its session is ``None`` when the statement ran
    as a transaction of its own, :meth:`HotStatement.alone`: only a prelude whose check needs no
    session goes in front of one); ``alone`` makes the same write and check on its own
    (SQLite); ``undo`` (with ``params``) takes the write back when the statement ran alone and
    the request is refused after it, as a rollback would have.
    """

    sql: str
    params: dict[str, Any]
    settle: Callable[[Session | None, int], None]
    alone: Callable[[Session], None]
    undo: HotStatement | None = None


@dataclass(frozen=True, slots=True)
class Lead:
    """A one-row read a transaction makes before anything else, sent on PostgreSQL in front of
    the transaction's first read (:func:`first_led`) instead of in a round trip of its own: the
    Idempotency-Key claim (with the request's nonce) in front of an operation's terms read.

    ``ctes`` (``name AS (...), ...``, or empty: data-modifying CTEs must lead the whole
    statement) and ``select`` (a ``SELECT`` of one row of ``width`` columns) with their own
    ``:named`` parameters (``params``, none named as a parameter of the read it leads);
    ``settle`` is told that row before the read's own is looked at, and raises to stop the
    work: :func:`first_led` raises :class:`LeadStopped` with what it raised, which is not the
    work's own refusal.
    """

    ctes: str
    select: str
    width: int
    params: dict[str, Any]
    settle: Callable[[Session, Sequence[Any]], None]


class LeadStopped(Exception):
    """A :class:`Lead`'s settle stopped the work whose first read carried it; ``reason`` is what
    it raised (a replay of the key's first response, a refusal of the request)."""

    def __init__(self, reason: Exception) -> None:
        super().__init__(reason)
        self.reason = reason


#: ``Session.info`` key: the lead waiting for the transaction's first read.
_LEAD = "coalition_lead"


def lead(session: Session, pending: Lead) -> None:
    """Send ``pending`` with the session's next :func:`first_led` read (PostgreSQL only)."""
    invariant(dialect_of(session) == "postgresql", "a lead rides on PostgreSQL")
    session.info[_LEAD] = pending


def lead_pending(session: Session) -> bool:
    """Whether a :func:`lead` still waits for its read (the work made none)."""
    return _LEAD in session.info


#: The reads led by a lead's SQL, by (lead, read): each built once.
_LED: dict[tuple[str, str, HotStatement], tuple[HotStatement, dict[str, Any]]] = {}


def _led(pending: Lead, read: HotStatement) -> tuple[HotStatement, dict[str, Any]]:
    """``read`` after ``pending``'s columns, in one statement, and the values ``read`` binds
    itself. The read's row is joined to the lead's one row, so a read that finds nothing still
    brings the lead back (``found`` NULL)."""
    key = (pending.ctes, pending.select, read)
    built = _LED.get(key)
    if built is None:
        sql, fixed = named_sql(read.statement)
        head = f"WITH {pending.ctes} " if pending.ctes else ""
        composed = (
            f"{head}SELECT lead_row.*, own.* FROM ({pending.select}) AS lead_row"  # noqa: S608 (built from constants)
            f" LEFT JOIN (SELECT true AS found, r.* FROM ({sql}) AS r) AS own ON true"
        )
        built = _LED[key] = (HotStatement(text(composed)), fixed)
    return built


def first_led(session: Session, read: HotStatement, params: dict[str, Any]) -> Any | None:
    """``read.first(session, params)``, with the session's pending :func:`lead` (if any) in
    front of it in the same round trip, settled before the read's row is returned."""
    pending: Lead | None = session.info.pop(_LEAD, None)
    if pending is None:
        return read.first(session, params)
    invariant(not pending.params.keys() & params.keys(), "a lead's parameter clashes")
    statement, fixed = _led(pending, read)
    row = statement.first(session, {**fixed, **pending.params, **params})
    if row is None:
        raise InvariantViolated("a led read returned no row")
    try:
        pending.settle(session, row[: pending.width])
    except Exception as exc:
        raise LeadStopped(exc) from exc
    own = row[pending.width :]
    return tuple(own[1:]) if own[0] else None


def named_sql(statement: Any) -> tuple[str, dict[str, Any]]:
    """A Core statement as PostgreSQL SQL with ``:named`` parameters, to compose into a
    ``text()`` statement (in front of it a :class:`Prelude`, say), and the values the statement
    binds itself (:func:`_fixed_values`; integers and booleans written in: :func:`_literals`),
    to pass along with the caller's."""
    compiled = statement.compile(dialect=_NAMED_POSTGRESQL)
    fixed = _fixed_values(compiled)
    literals = _literals(fixed)

    def written(match: re.Match[str]) -> str:
        return literals.get(match.group(1), match.group(0))

    sql = _NAMED.sub(written, compiled.string) if literals else compiled.string
    return sql, {name: value for name, value in fixed.items() if name not in literals}


#: A ``:name`` parameter (not the second colon of a ``::`` cast).
_NAMED = re.compile(r"(?<![:\w]):(\w+)")


def _fixed_values(compiled: Any) -> dict[str, Any]:
    """The values a compiled statement binds itself (a literal compared with a column)."""
    binds = compiled.bind_names.items()
    return {name: bind.effective_value for bind, name in binds if not bind.required}


# ``:name`` parameters, and no ``::TYPE`` casts after them (``text()`` would not see a
# parameter followed by ``::``); PostgreSQL infers each parameter's type from where it is.
_NAMED_POSTGRESQL = PGDialect_psycopg(paramstyle="named")  # type: ignore[no-untyped-call]
_NAMED_POSTGRESQL.bind_typing = BindTyping.NONE
