"""``python -m bench.writes [earns] [--http] [--new-day] [--webhook]``: rows written and WAL
bytes per signed earn.

Signed earns (:mod:`bench.http`'s requests) sent one at a time to the API application as
``coalition serve`` builds it (driven through ASGI, :mod:`bench.asgi`: the same statements a
request over HTTP sends) or, with ``--http``, over a socket to ``coalition serve --workers 2``
itself, on a scratch database of ``COALITION_BENCH_DATABASE_URL``. Before and
after the load: the rows written (``n_tup_ins + n_tup_upd + n_tup_del`` of
``pg_stat_user_tables``, per table) and the server's WAL position (``pg_current_wal_lsn()``).
The service's connections are closed before each reading, so their statistics are flushed.
``--webhook``: the partner has one subscribed endpoint (an event and a delivery per earn).

Both readings are the whole server's WAL: run it on a server nothing else writes to (a private
instance, docs/benchmarks.md says how), or the neighbours' WAL counts too. No timing here, so a
noisy machine changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import URL

from api.runtime import services_of
from bench.asgi import BASE_URL, WARM_UP, Addressed, send_one, split
from bench.http import SCENARIOS, Signer, partner_key, serve, service_environment, subscribe
from bench.postgres import scratch_database, server_url
from bench.throughput import Bench, prepare

#: Rows written per table and the WAL position.
Reading = tuple[dict[str, int], int]

_ROWS = (
    "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables"
    " WHERE n_tup_ins + n_tup_upd + n_tup_del > 0"
)


def _reading(url: str) -> Reading:
    with psycopg.connect(url) as conn:
        rows = {name: int(n) for name, n in conn.execute(_ROWS)}
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
        if row is None:
            raise RuntimeError("no WAL position")
        return rows, int(row[0])


# ``--new-day``: the members' tier basis moved back a day before the load, as if their earns
# so far had been yesterday's, so that each member's first earn of the load rolls its window
# (coalition.ledger.tiers: the row locked first, then the one-statement earn).
_YESTERDAY = "UPDATE members SET tier_day = tier_day - 1, tier_since_day = tier_since_day - 1"
_ROLLED = (
    "SELECT count(*) FROM members"
    " WHERE tier_day = CAST(FLOOR(EXTRACT(EPOCH FROM now()) / 86400) AS INTEGER)"
)


def _asgi_load(
    url: URL, bench: Bench, count: int, prepare_day: Callable[[], None]
) -> tuple[list[int], Reading, Reading]:
    """The warm-up and the load through the application in-process (ASGI); the statuses and
    the readings before and after the load."""
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    key_id, secret = partner_key(bench)
    os.environ.update(service_environment(url, BASE_URL))
    from api.app import create_app  # noqa: PLC0415 (after the environment is set)

    app = create_app()
    engine = services_of(app.state).engine
    signer = Signer(Addressed(), key_id, secret)  # type: ignore[arg-type]
    make = SCENARIOS["earns"][1]
    rng = random.Random("writes")
    warm = [split(make(signer, rng, bench.members).raw) for _ in range(WARM_UP)]
    load = [split(make(signer, rng, bench.members).raw) for _ in range(count)]

    async def send(requests: list[Any]) -> list[int]:
        return [await send_one(app, raw) for raw in requests]

    asyncio.run(send(warm))
    engine.dispose()
    bench.engine.dispose()
    prepare_day()
    before = _reading(plain)
    statuses = asyncio.run(send(load))
    engine.dispose()
    return statuses, before, _reading(plain)


def _http_load(
    url: URL, bench: Bench, count: int, prepare_day: Callable[[], None]
) -> tuple[list[int], Reading, Reading]:
    """The warm-up and the load over a socket to ``coalition serve --workers 2``, one request
    at a time on one keep-alive connection; the server is stopped before each reading (its
    connections closed, their statistics flushed), so it serves the warm-up and the load
    separately."""
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    key_id, secret = partner_key(bench)
    bench.engine.dispose()
    rng = random.Random("writes")
    references = iter(range(1, 1 << 62))  # one sequence across both servers' signers

    def served(requests: int) -> list[int]:
        with (
            tempfile.TemporaryDirectory() as directory,
            serve(url, workers=2, log=Path(directory) / "serve.log") as server,
        ):
            signer = Signer(server, key_id, secret)
            signer.refs = references
            signed = [signer.earn(rng.choice(bench.members)).raw for _ in range(requests)]
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                return [_exchange(sock, raw) for raw in signed]

    served(WARM_UP)
    prepare_day()
    before = _reading(plain)
    statuses = served(count)
    return statuses, before, _reading(plain)


def _exchange(sock: socket.socket, raw: bytes) -> int:
    """Send one request and read its response (``Content-Length`` bodies); its status."""
    sock.sendall(raw)
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(
        int(v) for k, _, v in (x.partition(b":") for x in lines) if k.lower() == b"content-length"
    )
    while len(body) < length:
        body += sock.recv(65536)
    return int(lines[0].split(b" ")[1])


def measure(
    count: int, *, new_day: bool = False, http: bool = False, webhook: bool = False
) -> dict[str, Any]:
    """Rows and WAL bytes per signed earn, over ``count`` earns after a warm-up (``http``: over
    a socket to ``coalition serve``; else through the application in-process; ``webhook``: the
    partner has one subscribed endpoint, an event and a delivery per earn)."""
    with scratch_database(server_url(), f"coalition_bench_writes_{os.getpid()}") as url:
        plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
        bench = prepare(url.render_as_string(hide_password=False), members=1000)

        def prepare_day() -> None:
            if new_day:
                with psycopg.connect(plain) as conn:
                    conn.execute(_YESTERDAY)

        try:
            if webhook:
                subscribe(bench)
            load = _http_load if http else _asgi_load
            statuses, (rows_before, wal_before), (rows_after, wal_after) = load(
                url, bench, count, prepare_day
            )
            with psycopg.connect(plain) as conn:
                rolled = conn.execute(_ROLLED).fetchone()
        finally:
            bench.engine.dispose()
    per_table = {
        name: round((n - rows_before.get(name, 0)) / count, 2)
        for name, n in sorted(rows_after.items())
        if n != rows_before.get(name, 0)
    }
    return {
        "earns": count,
        "statuses": sorted(set(statuses)),
        "rows_per_earn": round(sum(per_table.values()), 2),
        "rows_per_earn_by_table": per_table,
        "wal_bytes_per_earn": round((wal_after - wal_before) / count),
        # Earns that were their member's first of a new day (0 unless ``--new-day``).
        "new_day_earns": int(rolled[0]) if new_day and rolled else 0,
        # For ``pg_waldump --start ... --end ... --stats=record`` on the server's WAL.
        "wal_range": [_lsn(wal_before), _lsn(wal_after)],
    }


def _lsn(position: int) -> str:
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def main(argv: list[str]) -> None:
    """``python -m bench.writes [earns] [--new-day] [--http] [--webhook]`` (default 4,000)."""
    counts = [a for a in argv if not a.startswith("--")]
    count = int(counts[0]) if counts else 4000
    result = measure(
        count, new_day="--new-day" in argv, http="--http" in argv, webhook="--webhook" in argv
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
