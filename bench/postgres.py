"""The PostgreSQL side of the benchmarks: scratch databases and the ``pgbench`` reference."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import URL, make_url

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
#: The line of pgbench's report the reference comes from.
TPS_RE = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)


def server_url() -> URL:
    """The server to benchmark: ``COALITION_BENCH_DATABASE_URL`` or the local default."""
    url = make_url(os.environ.get("COALITION_BENCH_DATABASE_URL", DEFAULT_URL))
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url


def _admin(url: URL) -> str:
    return url.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False
    )


@contextlib.contextmanager
def scratch_database(url: URL, name: str) -> Iterator[URL]:
    """A new, empty database ``name`` on ``url``'s server, dropped on the way out."""
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(_admin(url), autocommit=True) as conn:
        conn.execute(drop)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield url.set(database=name)
    finally:
        with psycopg.connect(_admin(url), autocommit=True) as conn:
            conn.execute(drop)


def server_version(url: URL) -> str:
    """The server's ``server_version`` setting."""
    with psycopg.connect(_admin(url)) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    assert row is not None
    return str(row[0])


def _pgbench(url: URL, *args: str) -> str:
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    command = [
        "pgbench",
        "-h", url.host or "127.0.0.1",
        "-p", str(url.port or 5432),
        "-U", url.username or "postgres",
        *args,
        url.database or "postgres",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench {' '.join(args)} failed:\n{done.stderr.strip()}")
    return done.stdout


def pgbench_init(url: URL) -> None:
    """Create pgbench's tables (scale 1) in ``url``'s database."""
    _pgbench(url, "-i", "-q", "-s", "1")


def pgbench_run(url: URL, script: Path, *, clients: int, seconds: int, threads: int) -> float:
    """Transactions per second of pgbench replaying ``script`` on ``url``'s database, with
    prepared statements (``-M prepared``: parsed and planned once per connection, as psycopg
    does with the service's statements)."""
    out = _pgbench(
        url, "-n", "-M", "prepared", "-f", str(script), "-T", str(seconds), "-c", str(clients),
        "-j", str(threads),
    )  # fmt: skip
    match = TPS_RE.search(out)
    if match is None:
        raise RuntimeError(f"no tps in pgbench's output:\n{out}")
    return float(match.group(1))


def pgbench_tps(url: URL, *, clients: int, seconds: int, threads: int | None = None) -> float:
    """Transactions per second of pgbench's built-in ``simple-update`` script (``-N``), with
    ``threads`` pgbench threads (default: one per client)."""
    out = _pgbench(
        url, "-b", "simple-update", "-n", "-T", str(seconds), "-c", str(clients), "-j",
        str(threads or clients),
    )  # fmt: skip
    match = TPS_RE.search(out)
    if match is None:
        raise RuntimeError(f"no tps in pgbench's output:\n{out}")
    return float(match.group(1))
