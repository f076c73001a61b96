"""Debian's pgbouncer for the tests: started in front of a PostgreSQL server on a free loopback
port, with its own configuration and auth file in a temporary directory, stopped and removed
at the end (even when a test fails).

    with PgBouncer.running(upstream_host, upstream_port, "coalition_x") as bouncer:
        url = bouncer.url("coalition_x")      # postgresql+psycopg://postgres@127.0.0.1:<port>/...

pgbouncer refuses to run as root: run as root, it runs as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.pgservers import free_port, wait_until

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
USER = "postgres"
START_TIMEOUT_S = 20.0


def available() -> bool:
    """True when Debian's pgbouncer is installed here."""
    return Path(PGBOUNCER).is_file()


def config(
    *, port: int, upstream_host: str, upstream_port: int, databases: list[str], home: Path
) -> str:
    """A pgbouncer.ini: transaction pooling, trust on loopback, a small shared server pool (so
    that the clients' transactions really move between server connections)."""
    lines = ["[databases]"]
    lines += [f"{d} = host={upstream_host} port={upstream_port} dbname={d}" for d in databases]
    lines += [
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        "auth_type = trust",
        f"auth_file = {home / 'userlist.txt'}",
        "pool_mode = transaction",
        "default_pool_size = 2",
        "max_client_conn = 200",
        f"logfile = {home / 'pgbouncer.log'}",
        f"pidfile = {home / 'pgbouncer.pid'}",
        f"admin_users = {USER}",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class PgBouncer:
    """A running pgbouncer."""

    port: int
    home: Path
    process: subprocess.Popen[bytes]

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` through this pgbouncer."""
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def conninfo(self, database: str) -> str:
        """The libpq connection string of ``database`` through this pgbouncer."""
        return f"host=127.0.0.1 port={self.port} user={USER} dbname={database} connect_timeout=5"

    def log(self) -> str:
        """What pgbouncer logged so far."""
        with contextlib.suppress(OSError):
            return (self.home / "pgbouncer.log").read_text(errors="replace")
        return ""

    @classmethod
    @contextlib.contextmanager
    def running(
        cls, upstream_host: str, upstream_port: int, *databases: str
    ) -> Iterator[PgBouncer]:
        """pgbouncer in front of ``upstream_host:upstream_port`` for ``databases``."""
        home = Path(tempfile.mkdtemp(prefix="coalition-pgbouncer-"))
        try:
            home.chmod(0o755)
            (home / "userlist.txt").write_text(f'"{USER}" ""\n')
            port = free_port()
            ini = home / "pgbouncer.ini"
            ini.write_text(
                config(
                    port=port,
                    upstream_host=upstream_host,
                    upstream_port=upstream_port,
                    databases=list(databases),
                    home=home,
                )
            )
            if os.geteuid() == 0:
                shutil.chown(home, USER, USER)
            command = [PGBOUNCER, str(ini)]
            if os.geteuid() == 0:
                command = ["runuser", "-u", USER, "--", *command]
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            bouncer = cls(port, home, process)
            try:

                def answers() -> bool:
                    if process.poll() is not None:
                        raise RuntimeError(f"pgbouncer exited:\n{bouncer.log()[-2000:]}")
                    with psycopg.connect(bouncer.conninfo(databases[0])) as conn:
                        return conn.execute("SELECT 1").fetchone() == (1,)

                wait_until(answers, START_TIMEOUT_S, "pgbouncer to accept connections")
                yield bouncer
            finally:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        finally:
            shutil.rmtree(home, ignore_errors=True)
