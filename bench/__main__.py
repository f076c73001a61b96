"""``python -m bench``: measure, print a table, write bench/results.json (docs/benchmarks.md).

``--only http``: signed requests over HTTP to ``coalition serve`` (bench/http.py; needs
Debian's ``wrk``). ``--only inprocess``: operations called in-process, and the demo.

On PostgreSQL (``COALITION_BENCH_DATABASE_URL``, default the local server) it creates
``coalition_bench_<pid>`` and ``coalition_bench_<pid>_pgbench`` and drops both at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy

from bench.ceiling import measure_ceilings
from bench.ceiling import table as ceiling_table
from bench.demo_run import run_demo_process
from bench.http import measure_http
from bench.http import table as http_table
from bench.postgres import (
    pgbench_init,
    pgbench_tps,
    scratch_database,
    server_url,
    server_version,
)
from bench.throughput import (
    BULK_BATCH,
    Bench,
    batched,
    bulk_throughput,
    count_bulk_statements,
    count_statements,
    prepare,
    throughput,
)

RESULTS = Path(__file__).resolve().parent / "results.json"
THREADS = (1, 4)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke check")
    parser.add_argument("--seconds", type=int, help="seconds per throughput run (default 10)")
    parser.add_argument("--members", type=int, help="the demo's members (default 400)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write JSON")
    parser.add_argument(
        "--only",
        choices=("http", "inprocess"),
        help="only the signed-HTTP benchmark against `coalition serve` (http), or only the "
        "in-process and demo ones (inprocess)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="`coalition serve --workers` for http (default 2)"
    )
    return parser


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_postgres(seconds: int, statement_runs: int, members: int) -> dict[str, Any]:
    """pgbench's reference, earn and burn throughput, and statement counts, in one run."""
    url = server_url()
    name = f"coalition_bench_{os.getpid()}"
    results: dict[str, Any] = {"server_version": server_version(url)}
    with (
        scratch_database(url, f"{name}_pgbench") as pgbench_url,
        scratch_database(url, name) as bench_url,
    ):
        _say(f"preparing {bench_url.render_as_string(hide_password=True)} ...")
        pgbench_init(pgbench_url)
        bench = prepare(bench_url.render_as_string(hide_password=False), members=members)
        try:
            results["throughput"] = _throughput(bench, pgbench_url, seconds)
            results["statements"] = _statements(bench, statement_runs)
            results["bulk"] = _bulk(bench, pgbench_url, seconds)
        finally:
            bench.engine.dispose()
    return results


def _throughput(bench: Bench, pgbench_url: Any, seconds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for threads in THREADS:
        # Interleaved, so that a noisy neighbour weighs on the reference and on us alike.
        _say(f"pgbench simple-update, {threads} client(s), {seconds} s ...")
        tps = pgbench_tps(pgbench_url, clients=threads, seconds=seconds)
        _say(f"earn, {threads} thread(s), {seconds} s ...")
        earn = throughput(bench, bench.earn, threads=threads, seconds=seconds)
        _say(f"burn, {threads} thread(s), {seconds} s ...")
        burn = throughput(bench, bench.burn, threads=threads, seconds=seconds)
        out[f"threads_{threads}"] = {
            "pgbench_tps": round(tps, 1),
            "earn_per_s": round(earn.per_s, 1),
            "burn_per_s": round(burn.per_s, 1),
            "earn_to_pgbench": round(earn.per_s / tps, 4),
            "burn_to_pgbench": round(burn.per_s / tps, 4),
            "earn_cpu_ms": round(earn.cpu_ms_per_op, 2),
            "burn_cpu_ms": round(burn.cpu_ms_per_op, 2),
        }
    one, four = out["threads_1"], out[f"threads_{THREADS[-1]}"]
    out["scaling_4_to_1"] = {
        "pgbench": round(four["pgbench_tps"] / one["pgbench_tps"], 2),
        "earn": round(four["earn_per_s"] / one["earn_per_s"], 2),
        "burn": round(four["burn_per_s"] / one["burn_per_s"], 2),
    }
    return out


def _bulk(bench: Bench, pgbench_url: Any, seconds: int) -> dict[str, Any]:
    """Earns per second through earn_many beside pgbench (1 client) and a single earn."""
    _say(f"pgbench simple-update, 1 client, {seconds} s ...")
    tps = pgbench_tps(pgbench_url, clients=1, seconds=seconds)
    _say(f"earn_many, batches of {BULK_BATCH}, 1 thread, {seconds} s ...")
    bulk = bulk_throughput(bench, seconds=seconds)
    _say(f"earn, 1 thread, {seconds} s ...")
    single = throughput(bench, bench.earn, threads=1, seconds=seconds)
    count = count_bulk_statements(bench)
    return {
        "batch": BULK_BATCH,
        "pgbench_tps": round(tps, 1),
        "earn_many_per_s": round(bulk.per_s, 1),
        "earn_per_s": round(single.per_s, 1),
        "earn_many_to_pgbench": round(bulk.per_s / tps, 4),
        "earn_many_to_earn": round(bulk.per_s / single.per_s, 2),
        "earn_many_cpu_ms": round(bulk.cpu_ms_per_op, 3),
        "earn_cpu_ms": round(single.cpu_ms_per_op, 2),
        "statements_per_batch": count.per_operation,
        "commits_per_batch": count.commits_per_operation,
        "sample": count.statements,
    }


def _statements(bench: Bench, runs: int) -> dict[str, Any]:
    _say(f"counting statements over {runs} operations each ...")
    out: dict[str, Any] = {}
    for name, operation in (
        ("earn", bench.earn),
        ("burn", bench.burn),
        ("earn_batched", batched(bench, bench.earn)),
        ("burn_batched", batched(bench, bench.burn)),
    ):
        count = count_statements(bench, operation, operations=runs)
        out[name] = {
            "statements": count.per_operation,
            "commits": count.commits_per_operation,
            "sample": count.statements,
        }
    return out


def _row(label: str, value: str, ratio: str = "") -> tuple[str, str, str]:
    return (label, value, ratio)


def table(results: dict[str, Any]) -> list[str]:
    """The results as a plain-text table."""
    rows: list[tuple[str, str, str]] = [("figure", "value", "ratio")]
    pg = results["postgres"]
    for threads in THREADS:
        t = pg["throughput"][f"threads_{threads}"]
        rows += [
            _row(f"pgbench simple-update, {threads} client(s)", f"{t['pgbench_tps']:.0f} tps"),
            _row(
                f"earn, own transaction, {threads} thread(s)",
                f"{t['earn_per_s']:.0f} /s",
                f"{t['earn_to_pgbench']:.3f} x pgbench; client CPU {t['earn_cpu_ms']:.1f} ms/op",
            ),
            _row(
                f"burn, own transaction, {threads} thread(s)",
                f"{t['burn_per_s']:.0f} /s",
                f"{t['burn_to_pgbench']:.3f} x pgbench; client CPU {t['burn_cpu_ms']:.1f} ms/op",
            ),
        ]
    scaling = pg["throughput"]["scaling_4_to_1"]
    rows.append(
        _row(
            "4 threads / 1 thread",
            "",
            f"pgbench {scaling['pgbench']:.2f}, earn {scaling['earn']:.2f}, "
            f"burn {scaling['burn']:.2f}",
        )
    )
    for name, count in pg["statements"].items():
        rows.append(
            _row(
                f"statements per {name.replace('_', ' ')}",
                f"{count['statements']:g}",
                f"+ {count['commits']:g} commit",
            )
        )
    bulk = pg["bulk"]
    rows += [
        _row(
            f"earn_many, batches of {bulk['batch']}, 1 thread",
            f"{bulk['earn_many_per_s']:.0f} earns/s",
            f"{bulk['earn_many_to_pgbench']:.2f} x pgbench ({bulk['pgbench_tps']:.0f} tps), "
            f"{bulk['earn_many_to_earn']:.1f} x earn; client CPU "
            f"{bulk['earn_many_cpu_ms']:.2f} ms/earn",
        ),
        _row(
            "statements per earn_many batch",
            f"{bulk['statements_per_batch']:g}",
            f"+ {bulk['commits_per_batch']:g} commit",
        ),
    ]
    demo = results["demo_sqlite"]
    one = pg["throughput"]["threads_1"]
    rows += [
        _row(
            f"demo on SQLite, batched ({demo['members']} members)",
            f"{demo['operations_per_s']:.0f} /s",
            f"{demo['operations_per_s'] / one['pgbench_tps']:.3f} x pgbench (1 client); "
            f"CPU {demo['cpu_ms_per_op']:.1f} ms/op",
        ),
        _row(
            "demo: operations, time",
            f"{demo['operations']} ops",
            f"{demo['traffic_s']:.1f} s traffic, {demo['elapsed_s']:.1f} s in all",
        ),
        _row("demo: peak memory (ru_maxrss)", f"{demo['peak_rss_mib']:.0f} MiB"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for n, row in enumerate(rows):
        lines.append(
            f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}".rstrip()
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Run every benchmark once; print the table and write the JSON results."""
    args = _parser().parse_args(argv)
    seconds = args.seconds or (2 if args.quick else 10)
    members = args.members or (40 if args.quick else 400)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sqlalchemy": sqlalchemy.__version__,
            "platform": platform.platform(),
        },
        "seconds_per_run": seconds,
    }
    if args.only != "inprocess":
        results["http"] = measure_http(
            server_url(), seconds=seconds, workers=args.workers, members=1000
        )
        results["http"]["sql_ceiling"] = measure_ceilings(server_url(), seconds=seconds)
    if args.only != "http":
        results["postgres"] = measure_postgres(
            seconds, statement_runs=20 if args.quick else 100, members=200 if args.quick else 1000
        )
        _say(f"the demo on SQLite with {members} members ...")
        results["demo_sqlite"] = run_demo_process(members=members, seed=7)
    results["bench_s"] = round(time.perf_counter() - started, 1)
    if "http" in results:
        for line in [*http_table(results["http"]), *ceiling_table(results["http"])]:
            print(line)
    if "postgres" in results:
        for line in table(results):
            print(line)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {args.output}")
    http_ok = all(
        r.get("earns_match_201") is not False
        for r in results.get("http", {}).get("scenarios", {}).values()
    )
    return 0 if results.get("demo_sqlite", {}).get("invariants_ok", True) and http_ok else 1


if __name__ == "__main__":
    sys.exit(main())
