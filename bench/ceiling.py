"""A request's own SQL replayed by ``pgbench``: how fast PostgreSQL alone could answer it.

For a scenario of :mod:`bench.http` (earns, burns, balance reads), signed requests go through
the API application in-process, one at a time, as :mod:`bench.asgi` drives it. Every
statement they send to the driver is recorded with its parameters (SQLAlchemy's
``before_cursor_execute``, which sees the :class:`~coalition.hot.HotStatement` s too). The first
two requests whose statements are the same texts, in one transaction each, make a pgbench
script: ``BEGIN``, those statements, ``COMMIT``; a request of one statement, the statement on its
own (as the service sends a balance read: :meth:`coalition.hot.HotStatement.alone`).

- Each parameter is written into the statement as a literal of its type.
- A value that differs between the two requests is made unique per transaction from
  pgbench's ``random()``: a nonce, an Idempotency-Key, a reference, a new id.
- The member is drawn from the bench's members. That costs one indexed read of
  ``bench_members`` before the transaction, about 3% of an earn's replay (measured: that read
  alone runs at 40,000-49,000 per second here), so the ceiling is a little low.

``pgbench -M prepared`` replays the script at the concurrency of the HTTP rows, right after
``pgbench -N``, on the same server.

**The ratio is the ceiling of the service's ratio.** It is what the service would reach if
its Python cost nothing and PostgreSQL had the machine to itself. An HTTP row's ratio divided
by it is the share of that ceiling the service reaches.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from datetime import datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import URL, text

from api.app import create_app
from api.runtime import services_of
from bench.asgi import BASE_URL, Addressed, Recorded, record, split
from bench.http import CONNECTIONS, WRK_THREADS, Signer, partner_key, service_environment
from bench.postgres import pgbench_init, pgbench_run, pgbench_tps, scratch_database, server_url
from bench.throughput import Bench, prepare
from coalition.config import load_settings
from coalition.db import transaction

#: The scenarios whose SQL is replayed, and how one request of each is signed.
KINDS = ("earns", "burns", "balances")
_PARAM = re.compile(r"%\((\w+)\)s")
#: Strings longer than this (a webhook event's JSON) are kept as they are: only their size
#: matters to the database.
_VARYING_MAX = 200


def _literal(value: Any) -> str:
    """``value`` as an SQL literal of its type."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return f"'{value}'::numeric"
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    if isinstance(value, bytes):
        return f"'\\x{value.hex()}'::bytea"
    if isinstance(value, str):
        if value.isprintable():
            return "'" + value.replace("'", "''") + "'::varchar"
        escaped = json.dumps(value)[1:-1].replace("'", "''")  # \n, \t... as E'' escapes
        return f"E'{escaped}'::varchar"
    raise TypeError(f"no literal for a parameter of type {type(value).__name__}")


def _rendered(values: dict[str, str], match: re.Match[str]) -> str:
    return values[match.group(1)]


def script(first: Recorded, second: Recorded, members: tuple[str, str], population: int) -> str:
    """The pgbench script of one request, from two recorded requests (on ``members``), for a
    member drawn from ``population`` in ``bench_members``."""
    varying: dict[Any, str] = {}

    def value(one: Any, two: Any) -> str:
        if one in members:
            return ":member"
        short_text = isinstance(one, str) and len(one) <= _VARYING_MAX
        if one != two and short_text and not isinstance(one, datetime):
            if one not in varying:
                varying[one] = f"('v{len(varying)}_' || :r)::varchar"
            return varying[one]
        return _literal(one)

    lines = [
        f"\\set m random(1, {population})",
        "\\set r random(1, 9000000000000000)",
        "SELECT id AS member FROM bench_members WHERE n = :m \\gset",
    ]
    statements = []
    for (sql, params), (_, params_two) in zip(first.statements, second.statements, strict=True):
        values = {name: value(params[name], params_two[name]) for name in params}
        rendered = _PARAM.sub(partial(_rendered, values), sql)
        statements.append(" ".join(rendered.replace("%%", "%").split()) + ";")
    if len(statements) > 1:  # one statement is its own transaction, as the service sends it
        statements = ["BEGIN;", *statements, "COMMIT;"]
    return "\n".join(lines + statements) + "\n"


def _alike(one: Recorded, two: Recorded) -> bool:
    """Two requests of the same statements, each one transaction."""
    texts = [sql for sql, _ in one.statements]
    return (
        one.commits == two.commits == 1
        and texts == [sql for sql, _ in two.statements]
        and "<many>" not in texts
    )


def scripts(bench: Bench, url: URL, key_id: str, secret: str) -> dict[str, str]:
    """The pgbench script of each of :data:`KINDS`, recorded through the API application."""
    app = create_app(load_settings({**os.environ, **service_environment(url, BASE_URL)}))
    signer = Signer(Addressed(), key_id, secret)  # type: ignore[arg-type]
    sign = {"earns": signer.earn, "burns": signer.burn, "balances": signer.balance}
    found: dict[str, str] = {}
    try:
        for kind in KINDS:
            members = bench.members[:8]
            recorded = record(app, [split(sign[kind](member).raw) for member in members])
            for i in range(len(recorded) - 1):
                if _alike(recorded[i], recorded[i + 1]):
                    pair = (members[i], members[i + 1])
                    found[kind] = script(recorded[i], recorded[i + 1], pair, len(bench.members))
                    break
            else:
                raise RuntimeError(f"no two {kind} alike: {recorded}")
    finally:
        services_of(app.state).engine.dispose()
    return found


def measure_ceilings(url: URL, *, seconds: int) -> dict[str, Any]:
    """Each of :data:`KINDS` replayed by pgbench, after pgbench -N, on scratch databases of
    ``url``'s server (a fresh bench of :func:`bench.throughput.prepare`, as the HTTP rows')."""
    name = f"coalition_bench_sql_{os.getpid()}"
    results: dict[str, Any] = {}
    with (
        scratch_database(url, f"{name}_pgbench") as pgbench_url,
        scratch_database(url, name) as bench_url,
        tempfile.TemporaryDirectory(prefix="coalition-sql-") as directory,
    ):
        pgbench_init(pgbench_url)
        bench = prepare(bench_url.render_as_string(hide_password=False), members=1000)
        try:
            key_id, secret = partner_key(bench)
            found = scripts(bench, bench_url, key_id, secret)
            with transaction(bench.ops.sessions) as s:
                s.execute(text("CREATE TABLE bench_members (n integer PRIMARY KEY, id varchar)"))
                s.execute(
                    text("INSERT INTO bench_members (n, id) VALUES (:n, :id)"),
                    [{"n": n, "id": member} for n, member in enumerate(bench.members, start=1)],
                )
        finally:
            bench.engine.dispose()
        for kind, body in found.items():
            path = Path(directory) / f"{kind}.sql"
            path.write_text(body)
            lines = body.splitlines()
            print(f"http: the SQL of {kind} alone (pgbench), {seconds} s ...", file=sys.stderr)
            tps = pgbench_tps(
                pgbench_url, clients=CONNECTIONS, seconds=seconds, threads=WRK_THREADS
            )
            replayed = pgbench_run(
                bench_url, path, clients=CONNECTIONS, seconds=seconds, threads=WRK_THREADS
            )
            results[kind] = {
                "pgbench_tps": round(tps, 1),
                "sql_tps": round(replayed, 1),
                "ratio_to_pgbench": round(replayed / tps, 4),
                "statements": len(lines) - 3 - 2 * ("COMMIT;" in lines),
            }
    return results


def table(http: dict[str, Any]) -> list[str]:
    """The ceilings as plain-text rows, each with the share of it the HTTP row reached."""
    lines = [
        "SQL alone: each request's statements replayed by pgbench -M prepared, "
        f"{CONNECTIONS} clients, pgbench -N before each row"
    ]
    for kind, r in http.get("sql_ceiling", {}).items():
        served = http["scenarios"].get(kind, {}).get("ratio_to_pgbench")
        share = (
            f"  the HTTP row reached {served / r['ratio_to_pgbench']:.0%} of it" if served else ""
        )
        lines.append(
            f"  {kind:<11} {r['sql_tps']:>7.0f} /s  {r['ratio_to_pgbench']:.3f} x pgbench "
            f"({r['pgbench_tps']:.0f} tps)  {r['statements']} statements{share}"
        )
    return lines


def main(argv: list[str]) -> None:
    """``python -m bench.ceiling [seconds]`` (default 10): the ceilings alone."""
    http = {
        "scenarios": {},
        "sql_ceiling": measure_ceilings(server_url(), seconds=int(argv[0]) if argv else 10),
    }
    for line in table(http):
        print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
