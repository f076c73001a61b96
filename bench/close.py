"""``python -m bench.close``: the settlement close of a large period on PostgreSQL, beside a bare
``GROUP BY`` over the same transfers (docs/benchmarks.md, "The close").

For each size it makes a scratch database, onboards 50 partners (JPY, EUR, BHD) through the
service, generates the period's transactions set-based in SQL (``generate_series``: earns,
burns with the lot movements the cross-brand rows read, earn and burn reversals, partner-funded
bonuses), then in a child process times the bare aggregate (and a bare copy of the same
transfers into an unindexed table, the floor of writing a row per line) and the close, and
reports the close's peak memory (``tracemalloc`` of the Python heap, and the child's peak RSS)
and, after it, the time to hash and sign every document it issued once (what any close owes the
contract: the signature covers every line's bytes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import resource
import sys
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, event, text

from bench.postgres import scratch_database, server_url
from coalition.config import Settings
from coalition.db import make_engine, migrate, session_factory, transaction
from partners.rates import create_partner, create_rate_card
from settlement.close import close, close_in

PARTNERS = 50
MEMBERS = 20_000
START = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2026, 2, 1, tzinfo=UTC)
RESULTS = Path(__file__).resolve().parent / "close_results.json"
CURRENCIES = (("EUR", "0.0095", "0.0085"), ("JPY", "1.6", "1.25"), ("BHD", "0.0035", "0.0031"))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _partners(url: str) -> None:
    engine = make_engine(url)
    migrate(engine)
    with transaction(session_factory(engine)) as s:
        for n in range(PARTNERS):
            currency, issue, reimburse = CURRENCIES[n % len(CURRENCIES)]
            partner = create_partner(s, name=f"Partner {n}", currency=currency, now=START)
            create_rate_card(
                s,
                partner.id,
                earn_points_per_unit=Decimal(1),
                issue_price_per_point=Decimal(issue),
                burn_value_per_point=Decimal(issue),
                reimburse_price_per_point=Decimal(reimburse),
                max_burn_share=None,
                effective_from=START,
                now=START,
            )
    engine.dispose()


# Set-based generation: numbered partners and members, one lot per member (its origin partner
# is another partner than most of the member's burns), transactions spread evenly over the
# period, one lot movement per burn.
_GENERATE = [
    """CREATE TEMPORARY TABLE bench_partners AS
       SELECT (row_number() OVER (ORDER BY p.id)) - 1 AS n, p.id, p.currency, rc.id AS card,
              p.issued_account_id AS issued, p.redeemed_account_id AS redeemed
       FROM partners p JOIN rate_cards rc ON rc.partner_id = p.id""",
    """INSERT INTO accounts (id, kind)
       SELECT 1000 + g, 'member' FROM generate_series(1, :members) g""",
    """INSERT INTO members (id, account_id, balance, held, created_at)
       SELECT 'mem_bench' || g, 1000 + g, 0, 0, :start FROM generate_series(1, :members) g""",
    """INSERT INTO transactions (id, kind, partner_id, member_id, reference, points, amount_minor,
                                 currency, rate_card_id, occurred_at, posted_at, balance_after,
                                 overdraft_points, debit_account_id, credit_account_id)
       SELECT id, kind, partner_id, member_id, reference, points, NULL, NULL, card, occurred_at,
              posted_at, 0, 0,
              CASE WHEN kind IN ('earn', 'bonus') THEN issued
                   WHEN kind = 'burn_reversal' THEN redeemed ELSE account END,
              CASE WHEN kind IN ('earn', 'bonus', 'burn_reversal') THEN account
                   WHEN kind = 'burn' THEN redeemed ELSE issued END
       FROM (
         SELECT 'txn_bench' || lpad(g::text, 10, '0') AS id,
                CASE WHEN g % 100 < 78 THEN 'earn' WHEN g % 100 < 94 THEN 'burn'
                     WHEN g % 100 < 97 THEN 'earn_reversal' WHEN g % 100 < 99 THEN 'burn_reversal'
                     ELSE 'bonus' END AS kind,
                bp.id AS partner_id, 'mem_bench' || (1 + g % :members) AS member_id,
                1000 + (1 + g % :members) AS account, 'ref-' || g AS reference,
                1 + (g::bigint * 7919) % 2500 AS points, bp.card, bp.issued, bp.redeemed,
                :start + (g::float8 / :size) * (:end - :start) - interval '5 minutes' * (g % 3)
                  AS occurred_at,
                :start + (g::float8 / :size) * (:end - :start) AS posted_at
         FROM generate_series(1, :size) g
         JOIN bench_partners bp ON bp.n = g % :partners) x""",
    """INSERT INTO lots (member_id, origin_partner_id, transaction_id, points, remaining,
                         expires_at, is_deficit)
       SELECT 'mem_bench' || m, bp.id, 'txn_bench' || lpad(m::text, 10, '0'), 1000000, 1000000,
              :end + interval '365 days', false
       FROM generate_series(1, :members) m JOIN bench_partners bp ON bp.n = (m * 7) % :partners""",
    """INSERT INTO lot_movements (transaction_id, lot_id, origin_partner_id, points)
       SELECT t.id, l.id, l.origin_partner_id,
              CASE WHEN t.kind = 'burn' THEN -t.points ELSE t.points END
       FROM transactions t JOIN lots l ON l.member_id = t.member_id
       WHERE t.kind IN ('burn', 'burn_reversal')""",
    "ANALYZE",
]

_BARE = """
SELECT partner_id, kind, COUNT(*), SUM(points) FROM transactions
WHERE posted_at >= :start AND posted_at < :end GROUP BY partner_id, kind
"""
# The floor of writing one row per line: the same transfers copied into an unindexed temporary
# table, without prices, amounts or any constraint.
_BARE_COPY = """
CREATE TEMPORARY TABLE bench_bare_copy AS
SELECT id, partner_id, kind, posted_at, occurred_at, points, rate_card_id FROM transactions
WHERE posted_at >= :start AND posted_at < :end
"""


def _generate(url: str, size: int) -> float:
    engine = make_engine(url)
    started = time.perf_counter()
    params = {"members": MEMBERS, "size": size, "partners": PARTNERS, "start": START, "end": END}
    with engine.begin() as conn:
        for statement in _GENERATE:
            conn.execute(text(statement), params)
    engine.dispose()
    return time.perf_counter() - started


def _time_in_sql(
    engine: Engine,
) -> tuple[list[float], list[tuple[float, str]], dict[str, list[float]]]:
    """Seconds spent waiting for statements (cursor execute) from now on: ([total], the
    statements that took longer than a second, with their first words, and by their first
    words: [count, seconds])."""
    spent = [0.0]
    slow: list[tuple[float, str]] = []
    by_statement: dict[str, list[float]] = {}

    @event.listens_for(engine, "before_cursor_execute")
    def before(conn: Any, *_: Any) -> None:
        conn.info["bench_started"] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        took = time.perf_counter() - conn.info.pop("bench_started")
        spent[0] += took
        words = " ".join(statement.split())
        if took > 1:
            slow.append((round(took, 2), words[:90]))
        totals = by_statement.setdefault(words[:40], [0, 0.0])
        totals[0] += 1
        totals[1] += took

    return spent, slow, by_statement


def _hash_and_sign(sessions: Any) -> float:
    """Seconds to SHA-256 and Ed25519-sign every issued document's canonical bytes once (what
    the contract needs of any close: the signature covers every line), documents read one at a
    time and not timed."""
    key = Ed25519PrivateKey.generate()
    spent = 0.0
    with transaction(sessions) as s:
        ids = s.scalars(text("SELECT id FROM statements ORDER BY id")).all()
        for statement_id in ids:
            document = s.scalar(
                text("SELECT document FROM statements WHERE id = :id"), {"id": statement_id}
            )
            canonical = str(document).encode("utf-8")
            started = time.perf_counter()
            hashlib.sha256(canonical).hexdigest()
            key.sign(canonical)
            spent += time.perf_counter() - started
    return spent


def _measure(url: str, out: Any, memory: bool) -> None:
    """In a fresh child: the bare GROUP BY, then the close with its peak memory."""
    engine = make_engine(url)
    sessions = session_factory(engine)
    with engine.connect() as conn:
        started = time.perf_counter()
        rows = conn.execute(text(_BARE), {"start": START, "end": END}).all()
        bare_s = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute(text(_BARE_COPY), {"start": START, "end": END})
        bare_copy_s = time.perf_counter() - started
        conn.rollback()
    rss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    settings = Settings(secret_key=b"b" * 32)
    arguments: dict[str, Any] = {
        "secret_key": settings.secret_key,
        "cycle": "monthly",
        "tz": settings.tz,
        "now": END + timedelta(hours=1),
        "cut_off": END,
    }
    # First the memory, under tracemalloc (which slows Python down), in a transaction that is
    # rolled back; then the time, without it, committed.
    peak = 0
    if memory:
        tracemalloc.start()
        with sessions() as session:
            session.begin()
            close_in(session, **arguments)
            session.rollback()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    in_sql, slow, by_statement = _time_in_sql(engine)
    started = time.perf_counter()
    closed = close(sessions, **arguments)
    close_s = time.perf_counter() - started
    close_in_sql_s = in_sql[0]
    close_sql = {words: (int(n), seconds) for words, (n, seconds) in by_statement.items()}
    with transaction(sessions) as s:
        lines = s.scalar(text("SELECT COUNT(*) FROM statement_lines")) or 0
        largest = s.scalar(text("SELECT MAX(LENGTH(document)) FROM statements")) or 0
    sign_s = _hash_and_sign(sessions)
    engine.dispose()
    out.put(
        {
            "bare_group_by_s": round(bare_s, 3),
            "bare_groups": len(rows),
            "bare_copy_s": round(bare_copy_s, 3),
            "close_s": round(close_s, 3),
            "close_in_sql_s": round(close_in_sql_s, 3),
            "slow_statements": slow,
            "sql_by_statement": {
                words: [n, round(seconds, 3)]
                for words, (n, seconds) in sorted(close_sql.items(), key=lambda i: -i[1][1])
                if seconds >= 0.05
            },
            "close_in_python_s": round(close_s - close_in_sql_s, 3),
            "hash_and_sign_documents_s": round(sign_s, 3),
            "ratio_close_to_bare": round(close_s / bare_s, 2) if bare_s else None,
            "statements": len(closed.statements),
            "lines": int(lines),
            "close_peak_python_heap_mb": round(peak / 2**20, 1) if memory else None,
            "largest_statement_document_mb": round(int(largest) / 2**20, 1),
            "rss_before_close_mb": round(rss_before_kb / 1024, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    )


def run(size: int, *, memory: bool = True) -> dict[str, Any]:
    """Generate a period of ``size`` transactions and measure its close."""
    base = server_url()
    with scratch_database(base, f"coalition_bench_close_{size}") as url:
        full = url.render_as_string(hide_password=False)
        _partners(full)
        _say(f"{size:,} transactions: generating ...")
        generate_s = _generate(full, size)
        _say(f"  generated in {generate_s:.1f} s; measuring ...")
        context = multiprocessing.get_context("spawn")
        out = context.Queue()
        child = context.Process(target=_measure, args=(full, out, memory))
        child.start()
        result: dict[str, Any] = out.get(timeout=3600)
        child.join(timeout=60)
        return {"transactions": size, "partners": PARTNERS, "generate_s": round(generate_s, 1),
                **result}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the sizes, print one JSON object per size and write bench/close_results.json."""
    parser = argparse.ArgumentParser(prog="python -m bench.close", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the (slower) traced-memory run"
    )
    args = parser.parse_args(argv)
    results = []
    for size in args.sizes:
        result = run(size, memory=not args.no_memory)
        print(json.dumps(result), flush=True)
        results.append(result)
    args.output.write_text(json.dumps({"close": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
