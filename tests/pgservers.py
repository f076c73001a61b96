"""Real PostgreSQL 15 servers for the tests that need more than the one on 5432: a primary, a
streaming standby, a restored copy, each its own cluster in a temporary directory on a free
loopback port, stopped and removed when the test session ends (even when a test fails).

Nothing but the standard library, psycopg and Debian's PostgreSQL binaries
(``/usr/lib/postgresql/15/bin``, or ``$COALITION_PG_BINDIR``). The tests run as root; every
server program runs as the ``postgres`` user (``runuser -u postgres --``), as PostgreSQL
refuses root. Run as another user, the programs run as that user.

Typical use, one pair shared by a test session::

    with PgServers() as servers:
        primary = servers.primary()                        # initdb + start
        standby = servers.standby(primary, synchronous=True)
        primary.execute("CREATE DATABASE app")
        engine = make_engine(primary.url("app"))
        ...
        primary.stop("immediate")                          # a crash
        standby.promote()                                  # the standby takes over

A WAL-archiving primary and a restore::

    primary = servers.primary(settings={"archive_mode": "on",
                                        "archive_command": f"cp %p {archive}/%f"})
    backup = servers.base_backup(primary, "backup")       # a plain copy, not started
    restored = servers.restore(backup_dir, "restored", settings={
        "restore_command": f"cp {archive}/%f %p", "recovery_target_time": "..."})

Every wait polls a condition with a deadline (:func:`wait_until`); none is a bare sleep.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import psycopg

#: Debian's PostgreSQL 15 programs; ``$COALITION_PG_BINDIR`` overrides.
BINDIR = Path(os.environ.get("COALITION_PG_BINDIR", "/usr/lib/postgresql/15/bin"))
#: The superuser of every cluster made here (trust authentication on loopback).
SUPERUSER = "postgres"
#: Bounds of the waits (a server starting, a standby catching up, a promotion).
START_TIMEOUT_S = 60.0
CATCH_UP_TIMEOUT_S = 60.0

#: Settings every cluster gets: loopback only, no Unix socket (no shared path to collide
#: on), small, and quick to write. ``fsync = off`` is safe for ``pg_ctl stop -m immediate``
#: (a server crash: the operating system keeps what was written); pass ``fsync: "on"`` in
#: ``settings`` for a test that needs durability across a machine crash (none here can).
BASE_SETTINGS: dict[str, str] = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "shared_buffers": "32MB",
    "max_connections": "100",
    "fsync": "off",
    "full_page_writes": "off",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "hot_standby": "on",
    "wal_keep_size": "256MB",
    "log_min_messages": "warning",
    "timezone": "UTC",
}

T = TypeVar("T")
StopMode = Literal["smart", "fast", "immediate"]


def available() -> bool:
    """True when the PostgreSQL server programs are installed here (``initdb`` and friends)."""
    return all((BINDIR / program).is_file() for program in ("initdb", "pg_ctl", "pg_basebackup"))


def free_port() -> int:
    """A loopback TCP port nobody listens on now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Poll ``condition`` until it returns something truthy (returned), failing with
    ``TimeoutError`` naming ``what`` after ``timeout_s``. An exception in ``condition``
    counts as "not yet" (a server not accepting connections yet); the last one is chained."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        try:
            value = condition()
        except Exception as exc:  # not ready yet; reported at the deadline
            last, value = exc, None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}") from last
        time.sleep(0.05)


def _as_server_user(args: list[str]) -> list[str]:
    return ["runuser", "-u", SUPERUSER, "--", *args] if os.geteuid() == 0 else args


def _run(args: list[str], *, timeout_s: float = 120.0) -> str:
    """Run a PostgreSQL program as the server user; its output, or ``RuntimeError``."""
    done = subprocess.run(
        _as_server_user(args), capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} exited with {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def _owned_dir(path: Path) -> Path:
    """Make ``path`` (0700) owned by the server user."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(path, SUPERUSER, SUPERUSER)
    return path


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass
class PgServer:
    """One PostgreSQL cluster: its data directory, port and log file."""

    name: str
    datadir: Path
    port: int
    logfile: Path
    host: str = "127.0.0.1"

    # -- addresses ------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` on this server (what ``COALITION_DATABASE_URL``
        would say)."""
        return f"postgresql+psycopg://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def conninfo(self, database: str = "postgres", **extra: str) -> str:
        """The libpq connection string of ``database`` on this server."""
        parts = {"host": self.host, "port": str(self.port), "user": SUPERUSER}
        parts |= {"dbname": database, "connect_timeout": "5", **extra}
        return " ".join(f"{k}={_quoted(v)}" for k, v in parts.items())

    # -- SQL --------------------------------------------------------------------------------

    def connect(self, database: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
        """A new autocommit connection (close it; ``with server.connect() as conn:``)."""
        return psycopg.connect(self.conninfo(database), autocommit=True)

    def query(self, sql: str, params: Any = None, database: str = "postgres") -> list[Any]:
        """Every row of one statement, on a connection of its own."""
        with self.connect(database) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description is not None else []

    def value(self, sql: str, params: Any = None, database: str = "postgres") -> Any:
        """The first column of the first row of one statement."""
        rows = self.query(sql, params, database)
        return rows[0][0] if rows else None

    def execute(self, sql: str, params: Any = None, database: str = "postgres") -> None:
        """One statement, autocommit (``CREATE DATABASE`` works)."""
        self.query(sql, params, database)

    def create_database(self, name: str, template: str | None = None) -> str:
        """``CREATE DATABASE name`` (from ``template`` when given); the SQLAlchemy URL."""
        ident = psycopg.sql.Identifier(name).as_string(None)
        suffix = f" TEMPLATE {psycopg.sql.Identifier(template).as_string(None)}" if template else ""
        self.execute(f"CREATE DATABASE {ident}{suffix}")
        return self.url(name)

    # -- configuration ------------------------------------------------------------------

    def configure(self, settings: Mapping[str, str | int]) -> None:
        """Append ``settings`` to ``postgresql.conf`` (a later line wins). They apply at the
        next :meth:`start`, or :meth:`reload` for the settings a reload changes."""
        lines = "".join(f"{k} = {_quoted(str(v))}\n" for k, v in settings.items())
        conf = self.datadir / "postgresql.conf"
        with conf.open("a") as out:
            out.write(lines)

    def reload(self) -> None:
        """``pg_ctl reload``: the server reads its configuration again."""
        _run([str(BINDIR / "pg_ctl"), "reload", "-D", str(self.datadir)])

    # -- life ---------------------------------------------------------------------------

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the server and wait until it accepts a query (a standby: read-only ones).
        A port someone took meanwhile is replaced by another free one."""
        for attempt in range(3):
            try:
                _run(
                    [
                        str(BINDIR / "pg_ctl"),
                        "start",
                        "-w",
                        "-t",
                        str(int(timeout_s)),
                        "-D",
                        str(self.datadir),
                        "-l",
                        str(self.logfile),
                    ],
                    timeout_s=timeout_s + 10,
                )
                break
            except RuntimeError as exc:
                if attempt == 2 or "could not bind" not in self.log():
                    raise RuntimeError(f"{self.name} did not start:\n{self.log()[-4000:]}") from exc
                self.port = free_port()
                self.configure({"port": self.port})
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until the server answers ``SELECT 1``."""
        wait_until(lambda: self.value("SELECT 1") == 1, timeout_s, f"{self.name} to answer")

    def stop(self, mode: StopMode = "fast", timeout_s: float = START_TIMEOUT_S) -> None:
        """``pg_ctl stop -m mode`` and wait until the server is gone. ``immediate`` is a crash
        (no checkpoint; the next start recovers from the WAL)."""
        if not self.running():
            return
        _run(
            [
                str(BINDIR / "pg_ctl"),
                "stop",
                "-w",
                "-t",
                str(int(timeout_s)),
                "-m",
                mode,
                "-D",
                str(self.datadir),
            ],
            timeout_s=timeout_s + 10,
        )

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop (``mode``) and start again (new settings from :meth:`configure` apply)."""
        self.stop(mode)
        self.start()

    def running(self) -> bool:
        """True while the server's postmaster runs (its pid file names a live process)."""
        pid_file = self.datadir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def log(self) -> str:
        """The server's log so far."""
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    # -- replication ----------------------------------------------------------------------

    def in_recovery(self) -> bool:
        """True on a standby (``pg_is_in_recovery()``)."""
        return bool(self.value("SELECT pg_is_in_recovery()"))

    def promote(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Promote this standby and wait until it takes writes."""
        _run([str(BINDIR / "pg_ctl"), "promote", "-w", "-D", str(self.datadir)])
        wait_until(lambda: not self.in_recovery(), timeout_s, f"{self.name} to be promoted")

    def current_lsn(self) -> str:
        """The primary's current WAL position (``pg_current_wal_lsn()``)."""
        return str(self.value("SELECT pg_current_wal_lsn()"))

    def wait_replayed(self, lsn: str, timeout_s: float = CATCH_UP_TIMEOUT_S) -> None:
        """Wait until this standby has replayed the WAL up to ``lsn``."""
        wait_until(
            lambda: self.value(
                "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %s::pg_lsn) >= 0", (lsn,)
            ),
            timeout_s,
            f"{self.name} to replay up to {lsn}",
        )

    def catch_up(self, primary: PgServer, timeout_s: float = CATCH_UP_TIMEOUT_S) -> None:
        """Wait until this standby has replayed everything ``primary`` has written so far."""
        self.wait_replayed(primary.current_lsn(), timeout_s)

    def pause_replay(self) -> None:
        """Stop applying WAL on this standby (it keeps receiving it): its data stays as it is
        now, so its lag grows. Undo with :meth:`resume_replay`."""
        self.execute("SELECT pg_wal_replay_pause()")
        wait_until(
            lambda: self.value("SELECT pg_get_wal_replay_pause_state()") == "paused",
            CATCH_UP_TIMEOUT_S,
            f"{self.name}'s replay to pause",
        )

    def resume_replay(self) -> None:
        """Apply WAL again after :meth:`pause_replay`."""
        self.execute("SELECT pg_wal_replay_resume()")

    def wait_streaming(self, standby: str, *, sync: bool = False) -> None:
        """On a primary: wait until the standby whose application name is ``standby``
        streams from it (and, with ``sync``, is its synchronous standby)."""
        wanted = "sync" if sync else None

        def streaming() -> bool:
            rows = self.query(
                "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s",
                (standby,),
            )
            return any(s == "streaming" and (wanted is None or w == wanted) for s, w in rows)

        wait_until(streaming, CATCH_UP_TIMEOUT_S, f"{standby} to stream from {self.name}")


@dataclass
class PgServers:
    """The servers of a test session, in one temporary directory; :meth:`close` (or leaving
    the ``with`` block, or the interpreter exiting) stops them all and removes it."""

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="coalition-pg-")))
    servers: list[PgServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        # the server user walks into the directory (its own subdirectories are 0700)
        self.base.chmod(0o755)
        atexit.register(self.close)

    def __enter__(self) -> PgServers:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _new(self, name: str) -> PgServer:
        if any(s.name == name for s in self.servers) or not re.fullmatch(r"[a-z0-9_]+", name):
            raise ValueError(f"server names are unique [a-z0-9_]+: {name!r}")
        home = _owned_dir(self.base / name)
        server = PgServer(name, home / "data", free_port(), home / "server.log")
        self.servers.append(server)
        return server

    def primary(
        self, name: str = "primary", settings: Mapping[str, str | int] | None = None
    ) -> PgServer:
        """A new cluster (``initdb``, trust authentication on loopback), started."""
        server = self._new(name)
        _run(
            [
                str(BINDIR / "initdb"),
                "-D",
                str(server.datadir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        server.configure({**BASE_SETTINGS, "cluster_name": name, "port": server.port})
        server.configure(settings or {})
        server.start()
        return server

    def base_backup(
        self, primary: PgServer, name: str, *, standby: bool = False, extra: Sequence[str] = ()
    ) -> PgServer:
        """``pg_basebackup`` of ``primary`` into a new directory (WAL streamed with it),
        configured with its own port and not started. With ``standby``, ``-R``: it starts as
        a streaming standby of ``primary``."""
        server = self._new(name)
        _run(
            [
                str(BINDIR / "pg_basebackup"),
                "-h",
                primary.host,
                "-p",
                str(primary.port),
                "-U",
                SUPERUSER,
                "-D",
                str(server.datadir),
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
                *(["-R"] if standby else []),
                *extra,
            ],
            timeout_s=300,
        )
        # the walreceiver names itself after cluster_name (pg_stat_replication.application_name)
        server.configure({"cluster_name": name, "port": server.port})
        return server

    def standby(
        self,
        primary: PgServer,
        name: str = "standby",
        *,
        synchronous: bool = False,
        settings: Mapping[str, str | int] | None = None,
    ) -> PgServer:
        """A streaming standby of ``primary`` (``pg_basebackup -R``), started and streaming.
        With ``synchronous``, ``primary`` waits for it at every commit
        (``synchronous_standby_names``; ``synchronous_commit = on``)."""
        server = self.base_backup(primary, name, standby=True)
        server.configure(settings or {})
        server.start()
        if synchronous:
            primary.configure({"synchronous_standby_names": name, "synchronous_commit": "on"})
            primary.reload()
        primary.wait_streaming(name, sync=synchronous)
        return server

    def restore(
        self, backup: Path, name: str, settings: Mapping[str, str | int] | None = None
    ) -> PgServer:
        """A new server from a copy of the base backup in ``backup`` (a data directory), in
        targeted recovery (``recovery.signal``) with ``settings`` (``restore_command``,
        ``recovery_target_time``, ``recovery_target_action``...), started. For a plain copy
        of a stopped server, pass ``settings=None`` and remove ``recovery.signal`` yourself."""
        server = self._new(name)
        shutil.copytree(backup, server.datadir, symlinks=True)
        if os.geteuid() == 0:
            subprocess.run(
                ["chown", "-R", f"{SUPERUSER}:{SUPERUSER}", str(server.datadir)], check=True
            )
        server.datadir.chmod(0o700)
        (server.datadir / "postmaster.pid").unlink(missing_ok=True)
        (server.datadir / "standby.signal").unlink(missing_ok=True)
        server.configure({"cluster_name": name, "port": server.port, **(settings or {})})
        signal_file = server.datadir / "recovery.signal"
        signal_file.touch()
        if os.geteuid() == 0:
            shutil.chown(signal_file, SUPERUSER, SUPERUSER)
        server.start()
        return server

    def close(self) -> None:
        """Stop every server (``immediate``: nothing here is kept) and remove the directory."""
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.stop("immediate", timeout_s=30)
        self.servers.clear()
        shutil.rmtree(self.base, ignore_errors=True)
        atexit.unregister(self.close)


@contextlib.contextmanager
def replicated_pair(
    *, synchronous: bool = True, settings: Mapping[str, str | int] | None = None
) -> Iterator[tuple[PgServers, PgServer, PgServer]]:
    """A primary and its streaming standby (synchronous by default), removed at the end."""
    with PgServers() as servers:
        primary = servers.primary(settings=settings)
        standby = servers.standby(primary, synchronous=synchronous)
        yield servers, primary, standby


def require(present: bool, what: str) -> None:
    """Skip a test whose program is missing; under CI (``CI`` set) fail instead, so a missing
    install step can never pass as a skip."""
    if present:
        return
    import pytest  # noqa: PLC0415 (only the tests that need a program pull pytest in here)

    if os.environ.get("CI"):
        pytest.fail(f"{what} must be installed in CI (./dev test installs it as root)")
    pytest.skip(f"{what} is not installed (./dev test installs it as root)")
