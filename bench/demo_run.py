"""The demo's batched throughput on SQLite and its peak memory, in a process of its own.

``run_demo_process`` starts ``python -m bench.demo_run`` in a temporary directory (so the
demo gets a fresh embedded database and the peak memory is the demo's alone); the child prints
one JSON line with what the demo did and ``resource.getrusage``'s ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cli.demo import demo
from coalition.config import Settings
from coalition.db import make_engine, session_factory

REPO = Path(__file__).resolve().parent.parent


def run_demo_process(*, members: int, seed: int) -> dict[str, Any]:
    """Run the demo in a child process on a fresh SQLite file; what it reports."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    with tempfile.TemporaryDirectory(prefix="coalition-bench-demo-") as cwd:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.demo_run",
                "--members",
                str(members),
                "--seed",
                str(seed),
            ],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"the demo failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """The child: run the demo quietly and print one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.demo_run")
    parser.add_argument("--members", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    url = "sqlite:///demo.sqlite3"
    engine = make_engine(url)
    settings = Settings(database_url=url, secret_key=b"d" * 32)
    result = demo(
        settings,
        engine,
        session_factory(engine),
        seed=args.seed,
        members=args.members,
        echo=lambda _line: None,
    )
    assert result is not None, "the demo's database was not empty"
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "members": args.members,
                "operations": result.operations,
                "refused": result.errors,
                "traffic_s": round(result.traffic_s, 3),
                "elapsed_s": round(result.elapsed_s, 3),
                "operations_per_s": round(result.operations / result.traffic_s, 1),
                "cpu_ms_per_op": round(1000 * result.traffic_cpu_s / result.operations, 2),
                "invariants_ok": result.invariants_ok,
                "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
            }
        )
    )
    return 0 if result.invariants_ok else 1


if __name__ == "__main__":
    sys.exit(main())
