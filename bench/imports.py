"""``python -m bench.imports``: ``coalition import earns`` of an N-row file on PostgreSQL,
beside a bare ``COPY`` of the same file into an unindexed table (docs/benchmarks.md).

It makes a CSV of ``--rows`` earns (default 1,000,000) over ``--members`` members, imports it
(rows per second, peak memory sampled at every batch), imports it again (every row a
duplicate), and copies it with ``COPY ... FROM STDIN`` into a table without indexes or
constraints: the floor of what moving those bytes into PostgreSQL costs. Targets (issue 10):
at least 25,000 rows/s and at least 0.3 x the bare COPY.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, text

from api.bulk import earn_from_fields, earn_from_json
from bench.postgres import scratch_database, server_url
from bench.throughput import prepare
from partners.imports import import_earns


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def write_file(path: Path, rows: int, members: list[str]) -> None:
    """The partner's day: ``rows`` earns of 12.34 EUR, round robin over ``members``."""
    with path.open("w") as out:
        out.write("member_id,reference,amount,currency,occurred_at\n")
        for n in range(rows):
            out.write(f"{members[n % len(members)]},bench-import-{n},12.34,EUR,\n")


def analyze(engine: Engine) -> None:
    """What autovacuum does as tables grow (by 10%: its default scale factor). The servers of
    this machine run with autovacuum off; without fresh statistics the planner takes a
    growing table for an empty one, and the reference lookup of a bulk earn scans the
    partner's whole history instead of its unique index."""
    with engine.connect() as conn:
        conn.execute(text("ANALYZE transactions, postings, lots, lot_movements, members"))
        conn.commit()


def bare_copy(url: str, path: Path) -> float:
    """Seconds to COPY ``path`` into a new unindexed table (then dropped)."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "CREATE TABLE bench_bare_copy (member_id text, reference text, amount text, "
            "currency text, occurred_at text)"
        )
        conn.commit()
        start = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy("COPY bench_bare_copy FROM STDIN (FORMAT csv, HEADER true)") as copy,
            path.open("rb") as data,
        ):
            while chunk := data.read(1 << 20):
                copy.write(chunk)
        conn.commit()
        seconds = time.perf_counter() - start
        conn.execute("DROP TABLE bench_bare_copy")
        conn.commit()
    return seconds


def run(rows: int, members: int) -> dict[str, Any]:
    """Measure; the figures as a dict."""
    server = server_url()
    with scratch_database(server, f"coalition_bench_import_{os.getpid()}") as url:
        bench = prepare(url.render_as_string(hide_password=False), members=members)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "earns.csv"
                write_file(path, rows, bench.members)
                analyze(bench.engine)
                rss: list[float] = [_rss_mib()]

                analyzed = [0]

                def sample(_done: int, done_rows: int) -> None:
                    rss.append(_rss_mib())
                    if done_rows % 100_000 == 0:
                        _say(f"  {done_rows} rows, RSS {rss[-1]:.1f} MiB")
                    if done_rows >= max(analyzed[0] * 1.1, analyzed[0] + 10_000):
                        analyze(bench.engine)
                        analyzed[0] = done_rows

                def once() -> tuple[float, Any]:
                    start = time.perf_counter()
                    summary = import_earns(
                        bench.ops,
                        bench.partner_id,
                        path,
                        "csv",
                        to_item=earn_from_fields,
                        from_json=earn_from_json,
                        progress=sample,
                    )
                    return time.perf_counter() - start, summary

                first_s, first = once()
                _say(f"import: {rows} rows in {first_s:.1f} s, peak RSS {max(rss):.1f} MiB")
                again_s, again = once()
                _say(f"re-import: {again.duplicates} duplicates in {again_s:.1f} s")
                assert first.imported == rows and not first.rejected, first
                assert again.duplicates == rows and again.imported == 0, again
                libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
                copy_s = bare_copy(libpq, path)
                size = path.stat().st_size
        finally:
            bench.engine.dispose()
    tenth = max(1, len(rss) // 10)
    return {
        "rows": rows,
        "file_bytes": size,
        "import_s": round(first_s, 2),
        "import_rows_per_s": round(rows / first_s),
        "reimport_s": round(again_s, 2),
        "reimport_rows_per_s": round(rows / again_s),
        "bare_copy_s": round(copy_s, 3),
        "bare_copy_rows_per_s": round(rows / copy_s),
        "ratio_to_bare_copy": round(copy_s / first_s, 4),
        "rss_mib_after_first_tenth": round(max(rss[:tenth]), 1),
        "rss_mib_peak": round(max(rss), 1),
        "maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run and print the figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.imports", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the file")
    parser.add_argument("--members", type=int, default=1_000, help="members the rows cover")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.rows, args.members), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
