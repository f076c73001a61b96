"""The database: engine (SQLite in WAL mode, or PostgreSQL through psycopg 3 with a pool),
portable column types, the declarative base, transactions and Alembic migrations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Boolean,
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
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import TypeDecorator

from coalition.errors import invariant, required

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
