"""The database: engine (SQLite in WAL mode, or PostgreSQL through psycopg 3 with a pool),
portable column types, the declarative base, transactions and Alembic migrations.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Boolean,
    Connection,
    CursorResult,
    DateTime,
    Dialect,
    Engine,
    MetaData,
    Numeric,
    String,
    any_,
    bindparam,
    create_engine,
    event,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine.interfaces import BindTyping
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import TypeDecorator

from coalition.errors import InvariantViolated, invariant, required

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: PostgreSQL: how long a request waits for a new connection, for a pooled one (all busy),
#: and for a server that stopped answering; past these it is ``503 unavailable``.
CONNECT_TIMEOUT_S = 5
POOL_TIMEOUT_S = 5
TCP_USER_TIMEOUT_S = 15

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every table; one metadata for the whole service."""

    metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every database (SQLite stores naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        invariant(value.tzinfo is not None, "timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ExactDecimal(TypeDecorator[Decimal]):
    """NUMERIC on PostgreSQL; a decimal string on SQLite (whose NUMERIC is a float)."""

    impl = Numeric(30, 12)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(40))
        return dialect.type_descriptor(Numeric(30, 12, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return str(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(value).normalize()


def _sqlite_on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE: a writer takes the write lock at
    # the start of its transaction, so a read-then-write never fails half way with SQLITE_BUSY.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def make_engine(
    url: str, *, pool_size: int = 10, max_overflow: int = 20, prepared_statements: bool = True
) -> Engine:
    """Create the engine for ``url`` (``sqlite:///file`` or ``postgresql+psycopg://...``).

    ``prepared_statements=False`` (``COALITION_DATABASE_PGBOUNCER``): psycopg never prepares a
    statement on the server. A pooler in transaction mode (pgbouncer before 1.21, or without
    ``max_prepared_statements``) hands each transaction any server connection: a statement
    prepared on one is missing on the next ("prepared statement "_pg3_0" does not exist"), or
    another client's of the same name is there already.
    """
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 10})
        event.listen(engine, "connect", _sqlite_on_connect)

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # No pre-ping: it is a round trip before every transaction. A connection the server
    # dropped fails its statement instead (a 503); SQLAlchemy then sees a disconnect and
    # discards the whole pool, so the requests after it get fresh connections
    # (docs/operations.md).
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=POOL_TIMEOUT_S,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_S,
            # a server that stops answering mid-request (a network partition) is given up on
            # instead of holding the request for the kernel's default of many minutes
            "tcp_user_timeout": TCP_USER_TIMEOUT_S * 1000,
            "keepalives_idle": TCP_USER_TIMEOUT_S,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            **({} if prepared_statements else {"prepare_threshold": None}),
        },
    )


def database_unreachable(exc: BaseException) -> bool:
    """True for a failure to reach the database or a connection lost under a statement (the
    server stopped, restarted, failed over or terminated the backend; the pool exhausted):
    expected in operation and retried, so a request answers ``503`` (never ``500``) and a
    scheduled job logs one warning (never a traceback). The transaction it broke was rolled
    back whole by the server."""
    if isinstance(exc, OperationalError | PoolTimeout | InterfaceError | psycopg.OperationalError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that never expire loaded objects on commit (results are read after it)."""
    return sessionmaker(engine, expire_on_commit=False, autoflush=False)


def dialect_of(session: Session) -> str:
    """The database the session talks to: ``postgresql`` or ``sqlite`` (cheap on the hot path)."""
    bind = session.bind if session.bind is not None else session.get_bind()
    return bind.dialect.name


#: ``Session.info`` key: the transaction's owner rolls all of it back on any error (the API's
#: one transaction per request), so an operation inside it needs no savepoint of its own.
WHOLE = "coalition_whole_transaction"


def owns_rollback(session: Session | None) -> bool:
    """True when ``session``'s owner rolls the whole transaction back on any error."""
    return session is not None and bool(session.info.get(WHOLE))


@contextlib.contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One database transaction: commit on success, roll back on any exception."""
    with factory() as session, session.begin():
        yield session


def _alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> tuple[str | None, str]:
    """Upgrade the schema to the newest revision; return (revision before, revision after)."""
    with engine.connect() as conn:
        before = MigrationContext.configure(conn).get_current_revision()
    command.upgrade(_alembic_config(engine), "head")
    head = required(
        ScriptDirectory.from_config(_alembic_config(engine)).get_current_head(),
        "the migrations have no head revision",
    )
    return before, head


def schema_is_current(engine: Engine) -> bool:
    """True when the database is at the newest migration."""
    head = ScriptDirectory.from_config(_alembic_config(engine)).get_current_head()
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision() == head


def utcnow() -> datetime:
    """The current time, timezone-aware UTC, at microsecond precision."""
    return datetime.now(UTC)


class AnyOf(ColumnElement[bool]):
    """``column`` is one of the list bound as ``name``: ``column = ANY(:name)`` on PostgreSQL
    (one array parameter however long the list: a bulk earn's 5,000 references or members
    cost one bind, not 5,000 placeholders for the driver to build and the server to parse),
    an expanding ``IN`` elsewhere."""

    inherit_cache = True
    type = Boolean()
    _is_implicitly_boolean = True
    _traverse_internals = [  # noqa: RUF012 (SQLAlchemy's own declaration: a list)
        ("column", InternalTraversal.dp_clauseelement),
        ("name", InternalTraversal.dp_string),
    ]

    def __init__(self, column: ColumnElement[Any], name: str) -> None:
        self.column = column
        self.name = name


@compiles(AnyOf)
def _any_of_in(element: AnyOf, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.column.in_(bindparam(element.name, expanding=True)), **kw)


@compiles(AnyOf, "postgresql")
def _any_of_array(element: AnyOf, compiler: SQLCompiler, **kw: Any) -> str:
    array = bindparam(element.name, type_=ARRAY(element.column.type))
    return compiler.process(element.column == any_(array), **kw)


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
    fixed: dict[str, Any]


#: A ``%(name)s`` parameter or a ``%%`` (a literal ``%``) in SQL rendered for psycopg.
_PYFORMAT = re.compile(r"%%|%\((\w+)\)s")


def _numbered(named: str) -> tuple[bytes, tuple[str, ...]]:
    """``named`` (psycopg's ``%(name)s`` style) with ``$n`` placeholders, one per name."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "%"
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    return _PYFORMAT.sub(number, named).encode(), tuple(order)


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
        raw, order = _numbered(compiled.string)
        self._compiled = _Compiled(compiled.string, raw, order, _fixed_values(compiled))
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
        if compiled.fixed:
            params = {**compiled.fixed, **params}
        if conn.dispatch.before_cursor_execute:
            for listener in conn.dispatch.before_cursor_execute:
                listener(conn, cursor, compiled.named, params, None, False)
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


def named_sql(statement: Any) -> tuple[str, dict[str, Any]]:
    """A Core statement as PostgreSQL SQL with ``:named`` parameters, to compose into a
    ``text()`` statement (in front of it a :class:`Prelude`, say), and the values the statement
    binds itself (:func:`_fixed_values`), to pass along with the caller's."""
    compiled = statement.compile(dialect=_NAMED_POSTGRESQL)
    return compiled.string, _fixed_values(compiled)


def _fixed_values(compiled: Any) -> dict[str, Any]:
    """The values a compiled statement binds itself (a literal compared with a column)."""
    binds = compiled.bind_names.items()
    return {name: bind.effective_value for bind, name in binds if not bind.required}


# ``:name`` parameters, and no ``::TYPE`` casts after them (``text()`` would not see a
# parameter followed by ``::``); PostgreSQL infers each parameter's type from where it is.
_NAMED_POSTGRESQL = PGDialect_psycopg(paramstyle="named")  # type: ignore[no-untyped-call]
_NAMED_POSTGRESQL.bind_typing = BindTyping.NONE
