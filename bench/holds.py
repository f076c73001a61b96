"""``python -m bench.holds [statements N | expiry N]``: holds, on PostgreSQL.

``statements``: the statements one signed ``POST /v1/holds``, ``.../void`` and ``.../capture``
sends (``N`` of each after a few of warm-up; the void and the capture alternate), through the
API application as ``coalition serve`` builds it, driven over ASGI one request at a time
(:func:`bench.asgi.record`: every statement that reaches the driver; a bulk ``COPY`` would not
be counted, and none of these sends one).

``expiry``: ``N`` members each holding one point, every hold moved past its expiry in SQL, and
``Operations.expire_holds`` run until it releases nothing more: the seconds and this
process's CPU seconds for the whole backlog.

On a scratch database of ``COALITION_BENCH_DATABASE_URL``, as the other benchmarks.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from sqlalchemy import text

from api.runtime import services_of
from bench.asgi import BASE_URL, Addressed, Recorded, record, split
from bench.http import Signer, partner_key, service_environment
from bench.postgres import scratch_database, server_url
from bench.throughput import drain, prepare

_WARM_UP = 6


def statements(count: int) -> dict[str, Any]:
    """Statements per signed hold, void and capture."""
    with scratch_database(server_url(), f"coalition_bench_holds_{os.getpid()}") as url:
        bench = prepare(url.render_as_string(hide_password=False), members=100)
        try:
            key_id, secret = partner_key(bench)
            os.environ.update(service_environment(url, BASE_URL))
            from api.app import create_app  # noqa: PLC0415 (after the environment is set)

            app = create_app()
            engine = services_of(app.state).engine
            signer = Signer(Addressed(), key_id, secret)  # type: ignore[arg-type]
            found: dict[str, list[Recorded]] = {"hold": [], "void": [], "capture": []}
            for n in range(2 * (count + _WARM_UP)):
                member = bench.members[n % len(bench.members)]
                body = {"member_id": member, "reference": f"bench-hold-{n}", "points": 1}
                found["hold"].extend(
                    record(app, [split(signer.request("POST", "/v1/holds", body))])
                )
                with engine.connect() as conn:
                    hold = conn.execute(
                        text("SELECT id FROM holds WHERE reference = :ref"),
                        {"ref": f"bench-hold-{n}"},
                    ).scalar_one()
                what = "void" if n % 2 else "capture"
                close = signer.request(
                    "POST", f"/v1/holds/{hold}/{what}", None if what == "void" else {}
                )
                found[what].extend(record(app, [split(close)]))
            engine.dispose()
            return {
                what: {
                    "statements_per_request": sum(len(r.statements) for r in kept) / len(kept),
                    "commits_per_request": sum(r.commits for r in kept) / len(kept),
                    "statements": [" ".join(s.split())[:100] for s, _ in kept[-1].statements],
                }
                for what, recorded in found.items()
                if (kept := recorded[_WARM_UP:])
            }
        finally:
            bench.engine.dispose()


_PAST_EXPIRY = "UPDATE holds SET expires_at = now() - interval '1 second' WHERE status = 'active'"


def expiry(members: int) -> dict[str, Any]:
    """The hold-expiry job's time over ``members`` holds past their expiry."""
    with scratch_database(server_url(), "coalition_bench_hold_expiry") as url:
        bench = prepare(url.render_as_string(hide_password=False), members=members)
        try:
            with bench.ops.batch() as s:
                for k, member in enumerate(bench.members):
                    bench.ops.hold(
                        bench.partner_id, member_id=member, reference=f"h{k}", points=1, session=s
                    )
            released, seconds, cpu_s = drain(bench, _PAST_EXPIRY, bench.ops.expire_holds)
            return {"holds": members, "released": released, "seconds": seconds, "cpu_s": cpu_s}
        finally:
            bench.engine.dispose()


def main(argv: list[str]) -> None:
    """``python -m bench.holds [statements N | expiry N]`` (default: statements 60)."""
    what = argv[0] if argv else "statements"
    count = int(argv[1]) if len(argv) > 1 else (60 if what == "statements" else 10_000)
    result = statements(count) if what == "statements" else expiry(count)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
