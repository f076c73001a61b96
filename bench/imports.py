"""``python -m bench.imports``: ``coalition import earns`` of an N-row file on PostgreSQL,
beside a bare ``COPY`` of the same file into an unindexed table (docs/benchmarks.md).

It makes a CSV of ``--rows`` earns (default 1,000,000) over ``--members`` members, imports it
(rows per second, peak memory sampled at every batch), imports it again (every row a
duplicate), runs ``coalition check`` on the result, and copies the file with ``COPY ... FROM
STDIN`` into a table without indexes or constraints: the floor of what moving those bytes into
PostgreSQL costs. A second floor is what the database alone spends writing the same rows into
the ledger's real tables (their indexes and foreign keys): from
that copied table, set-based (``INSERT ... SELECT`` of a transfer and a lot
per row, the members' balances and tier basis), committed. Targets (issue 10): at least 25,000
rows/s and at least 0.3 x the bare COPY.
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
from cli.runtime import freeze_heap
from coalition.db import transaction
from partners.imports import import_earns
from settlement.check import run_checks


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
        conn.execute(text("ANALYZE transactions, lots, lot_movements, members"))
        conn.commit()


# The import's rows written by the database alone (bench_bare_copy holds the file): every
# row 12 points (12.34 EUR at 1 point a unit, base tier), references prefixed so they differ
# from the import's; one transaction, committed.
_LEDGER_FLOOR = (
    "INSERT INTO transactions (id, kind, partner_id, member_id, reference, points, amount_minor,"
    " currency, rate_card_id, tier, occurred_at, posted_at, balance_after, overdraft_points,"
    " debit_account_id, credit_account_id)"
    " SELECT 'txn_floor_' || b.reference, 'earn', %(partner)s, b.member_id,"
    " 'floor-' || b.reference, 12, 1234, 'EUR', %(card)s, 'base', now(), now(), 12, 0,"
    " %(issued)s, m.account_id FROM bench_bare_copy b JOIN members m ON m.id = b.member_id",
    "INSERT INTO lots (member_id, origin_partner_id, transaction_id, points, remaining,"
    " expires_at, is_deficit) SELECT member_id, %(partner)s, 'txn_floor_' || reference, 12, 12,"
    " now() + interval '1095 days', false FROM bench_bare_copy",
    # The balance and the tier basis (coalition.ledger.tiers), one update per member.
    "UPDATE members SET balance = balance + c.points, tier_points = tier_points + c.points,"
    " tier_day = c.day, tier_since_day = COALESCE(tier_since_day, c.day - 364)"
    " FROM (SELECT member_id, 12 * count(*) AS points,"
    " CAST(FLOOR(EXTRACT(EPOCH FROM now()) / 86400) AS INTEGER) AS day FROM bench_bare_copy"
    " GROUP BY member_id) c WHERE members.id = c.member_id",
)


def ledger_floor(url: str, partner_id: str) -> float:
    """Seconds for the database alone to write the copied rows into the ledger's tables."""
    with psycopg.connect(url) as conn:
        card, issued = conn.execute(
            "SELECT r.id, p.issued_account_id FROM partners p JOIN rate_cards r"
            " ON r.partner_id = p.id WHERE p.id = %s",
            (partner_id,),
        ).fetchone() or (None, None)
        params = {"partner": partner_id, "card": card, "issued": issued}
        start = time.perf_counter()
        for statement in _LEDGER_FLOOR:
            conn.execute(statement, params)
        conn.commit()
        return time.perf_counter() - start


def bare_copy(url: str, path: Path, *, keep: bool = False) -> float:
    """Seconds to COPY ``path`` into a new unindexed table (dropped unless ``keep``)."""
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
        if not keep:
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

                freeze_heap()  # as `coalition import earns` does before it starts

                cpu: list[float] = []

                def once() -> tuple[float, Any]:
                    start, cpu_start = time.perf_counter(), time.process_time()
                    summary = import_earns(
                        bench.ops,
                        bench.partner_id,
                        path,
                        "csv",
                        to_item=earn_from_fields,
                        from_json=earn_from_json,
                        progress=sample,
                    )
                    cpu.append(time.process_time() - cpu_start)
                    return time.perf_counter() - start, summary

                first_s, first = once()
                _say(f"import: {rows} rows in {first_s:.1f} s, peak RSS {max(rss):.1f} MiB")
                again_s, again = once()
                _say(f"re-import: {again.duplicates} duplicates in {again_s:.1f} s")
                assert first.imported == rows and not first.rejected, first
                assert again.duplicates == rows and again.imported == 0, again
                with transaction(bench.ops.sessions) as s:
                    violations = {f.invariant: f.violations for f in run_checks(s) if not f.ok}
                _say(f"coalition check: {violations or 'every invariant holds'}")
                libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
                copy_s = bare_copy(libpq, path, keep=True)
                floor_s = ledger_floor(libpq, bench.partner_id)
                _say(f"bare COPY {copy_s:.2f} s, ledger floor {floor_s:.1f} s")
                size = path.stat().st_size
        finally:
            bench.engine.dispose()
    tenth = max(1, len(rss) // 10)
    return {
        "rows": rows,
        "file_bytes": size,
        "import_s": round(first_s, 2),
        "import_rows_per_s": round(rows / first_s),
        # The importing process's CPU (every thread), robust to a loaded machine's noise.
        "import_cpu_us_per_row": round(cpu[0] / rows * 1e6, 1),
        "reimport_s": round(again_s, 2),
        "reimport_rows_per_s": round(rows / again_s),
        "bare_copy_s": round(copy_s, 3),
        "bare_copy_rows_per_s": round(rows / copy_s),
        "ratio_to_bare_copy": round(copy_s / first_s, 4),
        "ledger_floor_s": round(floor_s, 2),
        "ledger_floor_rows_per_s": round(rows / floor_s),
        "ratio_to_ledger_floor": round(floor_s / first_s, 3),
        "floor_ratio_to_bare_copy": round(copy_s / floor_s, 4),
        "check_violations": violations,
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
