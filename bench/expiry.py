"""``python -m bench.expiry [members]``: the points-expiry job over a backlog, on PostgreSQL.

A scratch database of ``COALITION_BENCH_DATABASE_URL`` gets ``members`` members (default
10,000) with four lots each (a seed earn, then three bulk earns), every open lot is moved past
its date in SQL, and ``Operations.expire_points`` runs until it expires nothing more: the
seconds and this process's CPU seconds for the whole backlog (one expiry transfer per member).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from bench.postgres import scratch_database, server_url
from bench.throughput import drain, prepare
from partners.operations import EarnItem

_BATCH = 5000
_PAST_DUE = "UPDATE lots SET expires_at = now() - interval '1 day' WHERE remaining > 0"


def measure(members: int) -> dict[str, Any]:
    """The expiry job's time over ``members`` members' past-due lots."""
    with scratch_database(server_url(), "coalition_bench_expiry") as url:
        bench = prepare(url.render_as_string(hide_password=False), members=members)
        try:
            for round_ in range(3):
                for start in range(0, members, _BATCH):
                    chunk = bench.members[start : start + _BATCH]
                    items = [
                        EarnItem(m, f"x{round_}-{start}-{k}", "12.34", "EUR")
                        for k, m in enumerate(chunk)
                    ]
                    bench.ops.earn_many(bench.partner_id, items)
            expiries, seconds, cpu_s = drain(bench, _PAST_DUE, bench.ops.expire_points)
            return {"members": members, "expiries": expiries, "seconds": seconds, "cpu_s": cpu_s}
        finally:
            bench.engine.dispose()


def main(argv: list[str]) -> None:
    """``python -m bench.expiry [members]``."""
    print(json.dumps(measure(int(argv[0]) if argv else 10_000), indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
