"""``python -m bench.asgi [scenario] [requests]``: the Python CPU of one signed request, with
no HTTP server, load generator or neighbour in the way.

The API application as a worker of ``coalition serve`` builds it (``cli.serve.worker_app``), on
a scratch PostgreSQL database (``COALITION_BENCH_DATABASE_URL``, as the other benchmarks), driven
through ASGI one request at a time with the requests of :mod:`bench.http` (signed before the
clock starts): ``time.process_time()`` over the requests (every thread of the process: the
event loop's and the handlers') per request. One request at a time, so it is the CPU a request
costs, not what a loaded machine makes of it; compare code before and after with it
(``--against <tree>``: the two alternate in fresh processes, each tree's least and median;
a shared machine's noise moves single runs by a quarter), and use ``--only http`` for
throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import event

from api.runtime import services_of
from bench.http import SCENARIOS, Signer, partner_key, service_environment
from bench.postgres import scratch_database, server_url
from bench.throughput import prepare

BASE_URL = "http://127.0.0.1:8000"
WARM_UP = 50

Raw = tuple[str, str, bytes, list[tuple[bytes, bytes]], bytes]


class Addressed:
    """What :class:`bench.http.Signer` needs of a server: its URL and port."""

    base_url = BASE_URL
    port = 8000


def split(raw: bytes) -> Raw:
    """An HTTP/1.1 request as ASGI wants it: method, path, query, headers, body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    request_line, *lines = head.split(b"\r\n")
    method, target, _ = request_line.split(b" ")
    headers = [(k.strip().lower(), v.strip()) for k, v in (line.split(b":", 1) for line in lines)]
    path, _, query = target.partition(b"?")
    return method.decode(), path.decode(), query, headers, body


async def send_one(app: Any, raw: Raw) -> int:
    method, path, query, headers, body = raw
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    delivered = False
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never goes away
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


async def _drive(app: Any, requests: list[Raw]) -> tuple[float, dict[int, int]]:
    for raw in requests[:WARM_UP]:
        await send_one(app, raw)
    statuses: dict[int, int] = {}
    started = time.process_time()
    for raw in requests[WARM_UP:]:
        status = await send_one(app, raw)
        statuses[status] = statuses.get(status, 0) + 1
    return time.process_time() - started, statuses


@dataclass(slots=True)
class Recorded:
    """What one request sent to the driver: its statements in order, with their parameters
    (an executemany is one, as ``<many>``), and its commits."""

    statements: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    commits: int = 0


def record(app: Any, requests: Sequence[Raw]) -> list[Recorded]:
    """What each of ``requests`` sent to the driver, sent one at a time
    (``before_cursor_execute``: HotStatements included; the rate limiter's merge too, a few
    times a second, with the request it came in)."""
    engine = services_of(app.state).engine
    found: list[Recorded] = []

    def on_statement(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool
    ) -> None:
        single = not many and isinstance(parameters, dict)
        found[-1].statements.append((statement, dict(parameters)) if single else ("<many>", {}))

    def on_commit(_conn: Any) -> None:
        found[-1].commits += 1

    async def send_all() -> None:
        for raw in requests:
            found.append(Recorded())
            await send_one(app, raw)

    event.listen(engine, "before_cursor_execute", on_statement)
    event.listen(engine, "commit", on_commit)
    try:
        asyncio.run(send_all())
    finally:
        event.remove(engine, "before_cursor_execute", on_statement)
        event.remove(engine, "commit", on_commit)
    return found


def _statements(app: Any, requests: list[Raw]) -> tuple[float, float]:
    """Statements and commits per request reaching the driver (:func:`record`)."""
    recorded = record(app, requests)
    statements = sum(len(r.statements) for r in recorded)
    return statements / len(requests), sum(r.commits for r in recorded) / len(requests)


def measure(scenario: str, count: int) -> dict[str, Any]:
    """CPU ms per request of ``count`` requests of a :data:`bench.http.SCENARIOS` scenario."""
    with scratch_database(server_url(), f"coalition_bench_asgi_{os.getpid()}") as url:
        rendered = url.render_as_string(hide_password=False)
        bench = prepare(rendered, members=1000)
        try:
            key_id, secret = partner_key(bench)
            os.environ.update(service_environment(url, BASE_URL))
            from cli.serve import worker_app  # noqa: PLC0415 (after the environment is set)

            app = worker_app()
            signer = Signer(Addressed(), key_id, secret)  # type: ignore[arg-type]
            make = SCENARIOS[scenario][1]
            rng = random.Random(scenario)
            requests = [split(make(signer, rng, bench.members).raw) for _ in range(count + WARM_UP)]
            cpu_s, statuses = asyncio.run(_drive(app, requests))
            extra = [split(make(signer, rng, bench.members).raw) for _ in range(200)]
            statements, commits = _statements(app, extra)
        finally:
            bench.engine.dispose()
    return {
        "scenario": scenario,
        "requests": count,
        "cpu_ms_per_request": round(cpu_s * 1000 / count, 3),
        "statuses": statuses,
        "statements_per_request": round(statements, 2),
        "commits_per_request": round(commits, 2),
    }


_CPU = re.compile(r"([0-9.]+) ms CPU per request")


def _cpu_of(tree: Path, scenario: str, count: int) -> float:
    """CPU ms per request of ``tree``'s code (its own ``bench.asgi``, run from its directory,
    with this interpreter)."""
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.asgi", scenario, str(count)],
        cwd=tree, env=environment, capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = _CPU.search(done.stdout)
    if found is None:
        raise RuntimeError(f"{tree}: no figure in {done.stdout!r} {done.stderr[-500:]!r}")
    return float(found.group(1))


def against(other: Path, scenario: str, count: int, rounds: int) -> None:
    """This tree and ``other`` alternating, ``rounds`` times each: every figure, and each
    tree's least (the run a busy machine disturbed least) and median."""
    trees = {"this tree": Path(__file__).resolve().parent.parent, str(other): other.resolve()}
    figures: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(rounds):
        for name, tree in trees.items():
            figures[name].append(_cpu_of(tree, scenario, count))
    for name, runs in figures.items():
        listed = ", ".join(f"{run:.3f}" for run in runs)
        print(
            f"{scenario} {name}: {listed} ms CPU per request; least {min(runs):.3f},"
            f" median {statistics.median(runs):.3f}"
        )
    mine, theirs = (min(runs) for runs in figures.values())
    print(f"least of this tree / least of {other}: {mine / theirs:.3f}")


def main(argv: list[str]) -> None:
    """``python -m bench.asgi [scenario] [requests] [--against TREE [--rounds N]]`` (default:
    earns, 1500; 3 rounds): with ``--against``, this tree and the one at ``TREE`` (an unpacked
    ``git archive`` of another commit, say) alternate in fresh processes."""
    parser = argparse.ArgumentParser(prog="python -m bench.asgi")
    parser.add_argument("scenario", nargs="?", default="earns", choices=sorted(SCENARIOS))
    parser.add_argument("requests", nargs="?", type=int, default=1500)
    parser.add_argument("--against", type=Path, help="another tree to alternate with")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each tree (--against)")
    args = parser.parse_args(argv)
    scenario, count = args.scenario, args.requests
    if args.against is not None:
        against(args.against, scenario, count, args.rounds)
        return
    result = measure(scenario, count)
    print(
        f"{result['scenario']}: {result['cpu_ms_per_request']:.3f} ms CPU per request "
        f"({result['requests']} one at a time through ASGI), "
        f"{result['statements_per_request']} statements and {result['commits_per_request']} "
        f"commits per request, statuses {result['statuses']}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
