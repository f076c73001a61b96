"""Fixtures: a migrated database per test (SQLite file or a PostgreSQL clone), a clock that
tests move by hand, and :class:`~partners.operations.Operations` over both.

PostgreSQL comes from ``COALITION_TEST_DATABASE_URL`` (default: the local server's
``coalition_test``). Each test gets its own database cloned from a migrated template. Without a
reachable server the PostgreSQL tests skip, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from coalition.check import Finding
from coalition.config import Settings
from coalition.db import MIGRATIONS_DIR, make_engine, migrate, session_factory, transaction
from partners.models import Partner, RateCard
from partners.operations import Operations
from partners.rates import create_partner, create_rate_card
from settlement.check import run_checks

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/coalition_test"
PG_URL = os.environ.get("COALITION_TEST_DATABASE_URL", DEFAULT_PG)
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
_counter = itertools.count()


@dataclass
class Clock:
    """The time the service sees; tests move it explicitly."""

    now: datetime = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@dataclass
class Db:
    """A migrated database for one test."""

    engine: Engine
    sessions: sessionmaker[Session]
    backend: str
    clock: Clock = field(default_factory=Clock)
    settings: Settings = field(
        default_factory=lambda: Settings(secret_key=b"k" * 32, hold_default_expiry_s=900)
    )

    @property
    def ops(self) -> Operations:
        return Operations(self.settings, self.sessions, self.clock)

    @property
    def url(self) -> str:
        """The database URL (what ``COALITION_DATABASE_URL`` would say)."""
        return self.engine.url.render_as_string(hide_password=False)

    def configure(self, **changes: Any) -> None:
        """Change settings (``points_validity_days=30``...) for the operations that follow."""
        self.settings = replace(self.settings, **changes)

    def violations(self) -> dict[int, list[str]]:
        """``coalition check`` on this database: violations per broken invariant."""
        with transaction(self.sessions) as s:
            findings: list[Finding] = run_checks(s)
        return {f.invariant: f.violations for f in findings if not f.ok}

    def assert_ledger_ok(self) -> None:
        """Every ledger invariant holds."""
        assert self.violations() == {}

    def partner(
        self,
        currency: str = "EUR",
        *,
        earn: str = "1",
        issue: str = "0.01",
        burn: str = "0.01",
        reimburse: str = "0.008",
        max_burn_share: str | None = None,
        name: str = "Partner",
    ) -> Partner:
        """An active partner with a rate card in force from the clock's now."""
        with transaction(self.sessions) as s:
            partner = create_partner(s, name=name, currency=currency, now=self.clock())
            self.rate_card(
                partner.id,
                earn=earn,
                issue=issue,
                burn=burn,
                reimburse=reimburse,
                max_burn_share=max_burn_share,
                session=s,
            )
            return partner

    def rate_card(
        self,
        partner_id: str,
        *,
        earn: str = "1",
        issue: str = "0.01",
        burn: str = "0.01",
        reimburse: str = "0.008",
        max_burn_share: str | None = None,
        effective_from: datetime | None = None,
        session: Session | None = None,
    ) -> RateCard:
        def make(s: Session) -> RateCard:
            return create_rate_card(
                s,
                partner_id,
                earn_points_per_unit=Decimal(earn),
                issue_price_per_point=Decimal(issue),
                burn_value_per_point=Decimal(burn),
                reimburse_price_per_point=Decimal(reimburse),
                max_burn_share=Decimal(max_burn_share) if max_burn_share else None,
                effective_from=effective_from,
                now=self.clock(),
            )

        if session is not None:
            return make(session)
        with transaction(self.sessions) as s:
            return make(s)

    def member(self, points: int = 0, partner: Partner | None = None) -> str:
        """A member, optionally holding ``points`` earned at ``partner`` (1 point per unit)."""
        member_id, _ = self.ops.create_member()
        if points:
            assert partner is not None
            self.ops.earn(
                partner.id,
                member_id=member_id,
                reference=f"seed-{next(_counter)}",
                amount=str(points),
                currency=partner.currency,
            )
        return member_id


_SQLITE_TEMPLATES: dict[str, Path] = {}


def _sqlite(tmp_path: Path) -> Engine:
    """A copy of a SQLite file migrated once per test process (and per set of migrations)."""
    digest = _migrations_digest()
    template = _SQLITE_TEMPLATES.get(digest)
    if template is None:
        directory = Path(tempfile.mkdtemp(prefix="coalition-test-"))
        atexit.register(shutil.rmtree, directory, True)
        template = directory / "template.sqlite3"
        engine = make_engine(f"sqlite:///{template}")
        migrate(engine)
        engine.dispose()  # the last connection's close checkpoints the WAL into the file
        _SQLITE_TEMPLATES[digest] = template
    path = tmp_path / "test.sqlite3"
    shutil.copyfile(template, path)
    wal = template.with_name(template.name + "-wal")
    if wal.exists():
        shutil.copyfile(wal, path.with_name(path.name + "-wal"))
    return make_engine(f"sqlite:///{path}")


_TEMPLATE_READY: dict[str, bool] = {}


def _admin_conninfo(url: str) -> tuple[str, str]:
    parsed = make_url(url)
    base = parsed.database or "coalition_test"
    admin = parsed.set(drivername="postgresql", database="postgres")
    return admin.render_as_string(hide_password=False), base


def postgres_available() -> bool:
    admin, _ = _admin_conninfo(PG_URL)
    try:
        psycopg.connect(admin, connect_timeout=3).close()
    except psycopg.OperationalError:
        return False
    return True


def _migrations_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _ensure_template(admin: str, base: str) -> str:
    """The migrated template ``{base}_template``, built once and shared by every test process.

    Several pytest processes may share one server: the template is (re)built under an advisory
    lock only when its comment does not name the current migrations' digest, and it is closed
    to connections once ready, so cloning it never finds it busy.
    """
    template = f"{base}_template"
    if _TEMPLATE_READY.get(template):
        return template
    digest = _migrations_digest()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (template,))
        try:
            row = conn.execute(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                (template,),
            ).fetchone()
            _drop_orphans(conn, base)
            if row is None or row[0] != digest:
                conn.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{template}"')
                url = make_url(PG_URL).set(database=template).render_as_string(False)
                engine = make_engine(url)
                migrate(engine)
                engine.dispose()
                conn.execute(f'ALTER DATABASE "{template}" WITH ALLOW_CONNECTIONS false')
                conn.execute(f"COMMENT ON DATABASE \"{template}\" IS '{digest}'")
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (template,))
    _TEMPLATE_READY[template] = True
    return template


def _drop_orphans(conn: psycopg.Connection[Any], base: str) -> None:
    """Drop the clones of test processes that died before dropping them."""
    names = conn.execute(
        "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{base}_%",)
    ).fetchall()
    for (name,) in names:
        pid, _, number = name.removeprefix(f"{base}_").partition("_")
        if not (pid.isdigit() and number.isdigit()) or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except PermissionError:
            pass


def _create_clone() -> str:
    admin, base = _admin_conninfo(PG_URL)
    template = _ensure_template(admin, base)
    name = f"{base}_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


def _pg_drop(name: str) -> None:
    admin, _ = _admin_conninfo(PG_URL)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class _Clones:
    """PostgreSQL clones, made one ahead and dropped in background threads, so a test waits
    neither for CREATE DATABASE nor for DROP DATABASE."""

    def __init__(self) -> None:
        self.maker: ThreadPoolExecutor | None = None
        self.dropper: ThreadPoolExecutor | None = None
        self.spare: Future[str] | None = None

    def take(self) -> tuple[Engine, str]:
        if self.maker is None:
            self.maker = ThreadPoolExecutor(1, thread_name_prefix="test-pg-clone")
        ready = self.spare or self.maker.submit(_create_clone)
        self.spare = self.maker.submit(_create_clone)
        name = ready.result()
        url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
        return make_engine(url, pool_size=5, max_overflow=60), name

    def drop(self, name: str) -> None:
        if self.dropper is None:
            self.dropper = ThreadPoolExecutor(1, thread_name_prefix="test-pg-drop")
        self.dropper.submit(_pg_drop, name)

    def close(self) -> None:
        if self.spare is not None:
            with contextlib.suppress(Exception):
                self.drop(self.spare.result())
        for executor in (self.maker, self.dropper):
            if executor is not None:
                executor.shutdown(wait=True)
        self.maker, self.dropper, self.spare = None, None, None


_CLONES = _Clones()


def _pg_clone() -> tuple[Engine, str]:
    """A fresh migrated PostgreSQL database: (engine, name); drop it with :func:`_pg_drop`."""
    return _CLONES.take()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the spare PostgreSQL clone and wait for the pending drops."""
    _CLONES.close()


_PG_OK: list[bool] = []


def require_postgres() -> None:
    """Skip (or, under CI, fail) when PostgreSQL is not reachable."""
    if not _PG_OK:
        _PG_OK.append(postgres_available())
    if not _PG_OK[0]:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL tests must run in CI, but {PG_URL} is unreachable")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    """A fresh migrated database: once on SQLite, once on PostgreSQL."""
    if request.param == "sqlite":
        engine = _sqlite(tmp_path)
        yield Db(engine, session_factory(engine), "sqlite")
        engine.dispose()
        shutil.rmtree(tmp_path, ignore_errors=True)
        return
    require_postgres()
    engine, name = _CLONES.take()
    yield Db(engine, session_factory(engine), "postgres")
    engine.dispose()
    _CLONES.drop(name)


@pytest.fixture
def pg() -> Iterator[Db]:
    """A fresh migrated PostgreSQL database (for concurrency, locking and isolation tests)."""
    require_postgres()
    engine, name = _CLONES.take()
    yield Db(engine, session_factory(engine), "postgres")
    engine.dispose()
    _CLONES.drop(name)


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[Db]:
    """A fresh migrated SQLite database (quick unit tests)."""
    engine = _sqlite(tmp_path)
    yield Db(engine, session_factory(engine), "sqlite")
    engine.dispose()
