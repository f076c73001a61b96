"""``python -m bench.footprint``: what the ledger costs on disk, per operation.

A scratch PostgreSQL database (``COALITION_BENCH_DATABASE_URL``, default the local server),
one partner and ``--members`` members with a seed earn each; then ``--earns`` earns and
``--burns`` burns through :class:`~partners.operations.Operations` (each its own transaction,
as the API runs them), ``VACUUM ANALYZE``, and each table's rows, heap and index bytes before
and after: bytes per earn and per burn (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, text

from bench.postgres import scratch_database, server_url
from bench.throughput import prepare

SIZES = """
SELECT c.relname, c.reltuples::bigint AS rows, pg_relation_size(c.oid) AS heap,
       pg_indexes_size(c.oid) AS indexes, pg_total_relation_size(c.oid) AS total
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind = 'r'
"""


def sizes(engine: Engine) -> dict[str, dict[str, int]]:
    """Every table's estimated rows (after ANALYZE), heap, index and total bytes."""
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
        return {
            r.relname: {"rows": r.rows, "heap": r.heap, "indexes": r.indexes, "total": r.total}
            for r in conn.execute(text(SIZES))
        }


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the footprint as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.footprint")
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--earns", type=int, default=20000)
    parser.add_argument("--burns", type=int, default=5000)
    args = parser.parse_args(argv)
    with scratch_database(server_url(), f"coalition_footprint_{os.getpid()}") as url:
        bench = prepare(url.render_as_string(hide_password=False), members=args.members)
        try:
            rng = random.Random(7)
            before = sizes(bench.engine)
            for _ in range(args.earns):
                bench.earn(rng.choice(bench.members))
            middle = sizes(bench.engine)
            for _ in range(args.burns):
                bench.burn(rng.choice(bench.members))
            after = sizes(bench.engine)
        finally:
            bench.engine.dispose()
    out: dict[str, Any] = {"members": args.members, "earns": args.earns, "burns": args.burns}
    out["per_earn"] = {
        t: {k: round((middle[t][k] - before[t][k]) / args.earns, 1) for k in middle[t]}
        for t in middle
        if middle[t]["total"] != before[t]["total"] or middle[t]["rows"] != before[t]["rows"]
    }
    out["per_burn"] = {
        t: {k: round((after[t][k] - middle[t][k]) / args.burns, 1) for k in after[t]}
        for t in after
        if after[t]["total"] != middle[t]["total"] or after[t]["rows"] != middle[t]["rows"]
    }
    out["after"] = after
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
