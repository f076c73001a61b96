"""``python -m bench.soak``: a long run of mixed signed traffic at a constant, moderate rate
against ``coalition serve`` with its scheduled jobs on; is anything creeping?

One run: a scratch PostgreSQL database (``COALITION_BENCH_DATABASE_URL``, default the local
server), one partner (EUR) with 1,000 members holding points, ``coalition serve --workers 2``
*with* its scheduler child (hold expiry, points expiry, purges, webhook dispatch, the
settlement close). The settlement cycle is daily, in the ``Etc/GMT`` time zone whose midnight is
the first full hour at least five minutes into the run: the close job closes the day before at
start, and the day of the run's traffic at that hour (when the run lasts that long).

Traffic: ``--rate`` requests per second in all, paced evenly over ``--threads`` client
threads (open loop: a thread that fell behind sends at once until it has caught up), each
signing with :class:`api.client.CoalitionClient` (no retries: every failure counts): earns
(every 25th one sent again with its Idempotency-Key: a replay), burns, holds then captured,
voided or left to expire, balance reads, transaction listings and statement listings.

Sampled every ``--sample`` seconds: the resident memory (``VmRSS`` in ``/proc``) of every
process of the server (the supervisor, its uvicorn workers, its scheduler child). Per minute:
requests, errors, p50/p99 latency, each process's RSS. At the end ``coalition check`` on the
database. Pass criteria (printed, and the exit status): no error; every process's RSS over
the last ten minutes (or the second half of a shorter run) grew by less than
``--rss-bound-mib``; the p99 of the last ten minutes at most twice that of the ten after the
first (warm-up) minute. Written to ``bench/soak_results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from api.client import ApiResponse, CoalitionClient
from bench.http import SECRET_KEY, Server, serve
from bench.postgres import scratch_database, server_url
from bench.throughput import prepare
from coalition.db import transaction, utcnow
from partners.keys import create_key
from settlement.models import Period, Statement

RESULTS = Path(__file__).resolve().parent / "soak_results.json"
MIB = 1024 * 1024


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def close_zone(start: datetime) -> tuple[str, datetime]:
    """The ``Etc/GMT`` zone whose midnight is the first full UTC hour at least five minutes
    after ``start``, and that hour."""
    boundary = (start + timedelta(minutes=5)).replace(minute=0, second=0, microsecond=0)
    boundary += timedelta(hours=1)
    hour = boundary.hour  # local midnight at `hour` UTC: the zone is UTC - hour
    if hour <= 12:
        return (f"Etc/GMT+{hour}" if hour else "Etc/GMT"), boundary
    return f"Etc/GMT-{24 - hour}", boundary


def rss_bytes(pid: int) -> int | None:
    """The resident set of ``pid`` (``VmRSS``), or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def role_of(pid: int, server: Server) -> str:
    """A stable name for a process of the server: supervisor, worker-<pid> or scheduler."""
    if pid == server.process.pid:
        return "supervisor"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"gone-{pid}"
    if b"worker" in command:
        return f"scheduler-{pid}"
    if any(b"resource_tracker" in part for part in command):
        return f"resource-tracker-{pid}"
    if any(b"multiprocessing" in part for part in command):
        return f"worker-{pid}"
    return f"process-{pid}"


@dataclass
class Minute:
    """What one minute of the run saw."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    kinds: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    rss: dict[str, int] = field(default_factory=dict)
    #: the machine's 1-minute load average at the minute's last sample (a shared machine)
    load: float = 0.0


class Recorder:
    """Latencies, errors and memory samples, per minute of the run (thread-safe)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.minutes: dict[int, Minute] = defaultdict(Minute)
        self.error_samples: list[str] = []
        self.replays = 0
        #: (seconds into the run, RSS by process), every sample
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._lock = threading.Lock()

    def _minute(self, at: float) -> Minute:
        return self.minutes[int((at - self.started) // 60)]

    def request(self, kind: str, seconds: float, error: str | None) -> None:
        with self._lock:
            minute = self._minute(time.monotonic())
            minute.latencies_ms.append(seconds * 1000)
            minute.kinds[kind] += 1
            if error is not None:
                minute.errors += 1
                if len(self.error_samples) < 20:
                    self.error_samples.append(f"{kind}: {error}")

    def memory(self, rss: dict[str, int]) -> None:
        with self._lock:
            now = time.monotonic()
            self.samples.append((now - self.started, rss))
            # the minute's last sample stands for it in the table
            minute = self._minute(now)
            minute.rss = rss
            minute.load = float(Path("/proc/loadavg").read_text().split()[0])


class Traffic:
    """One client thread's share of the mix."""

    def __init__(self, client: CoalitionClient, members: list[str], seed: int, rec: Recorder):
        self.client = client
        self.members = members
        self.rng = random.Random(seed)
        self.rec = rec
        self.earns = 0

    def _timed(self, kind: str, call: Callable[[], ApiResponse], ok: int) -> ApiResponse | None:
        started = time.perf_counter()
        try:
            response = call()
        except Exception as exc:  # every failure counts, whatever it is
            self.rec.request(kind, time.perf_counter() - started, f"{type(exc).__name__}: {exc}")
            return None
        error = None if response.status == ok else f"{response.status} {response.data}"
        self.rec.request(kind, time.perf_counter() - started, error)
        return response if error is None else None

    def one(self) -> None:
        """One step of the mix (a hold and its capture or void are two requests)."""
        member = self.rng.choice(self.members)
        ref = f"soak-{uuid.uuid4().hex}"
        roll = self.rng.random()
        c = self.client
        if roll < 0.35:
            self.earns += 1
            key = str(uuid.uuid4())
            self._timed(
                "earn", lambda: c.earn(member, ref, "12.34", "EUR", idempotency_key=key), 201
            )
            if self.earns % 25 == 0:
                replay = self._timed(
                    "earn-replay",
                    lambda: c.earn(member, ref, "12.34", "EUR", idempotency_key=key),
                    201,
                )
                if replay is not None and replay.replayed:
                    with self.rec._lock:
                        self.rec.replays += 1
        elif roll < 0.50:
            self._timed("burn", lambda: c.burn(member, ref, points=3), 201)
        elif roll < 0.62:
            hold = self._timed("hold", lambda: c.hold(member, ref, 5, expires_in=30), 201)
            if hold is not None:
                hold_id = hold.data["id"]
                fate = self.rng.random()
                if fate < 0.6:
                    self._timed("capture", lambda: c.capture(hold_id), 200)
                elif fate < 0.85:
                    self._timed("void", lambda: c.void(hold_id), 200)
                # else: left to the hold-expiry job
        elif roll < 0.82:
            self._timed("balance", lambda: c.balance(member), 200)
        elif roll < 0.95:
            self._timed(
                "transactions", lambda: c.list_transactions(member_id=member, limit=20), 200
            )
        else:
            self._timed("statements", lambda: c.request("GET", "/v1/statements"), 200)


def drive(
    server: Server,
    key: tuple[str, str],
    members: list[str],
    *,
    rate: float,
    threads: int,
    until: float,
    rec: Recorder,
) -> None:
    """Send the mix at ``rate`` steps per second over ``threads`` threads until ``until``."""
    interval = threads / rate

    def run(n: int) -> None:
        with CoalitionClient(server.base_url, key[0], secret=key[1], retries=0) as client:
            traffic = Traffic(client, members, n, rec)
            due = time.monotonic() + n * interval / threads
            while due < until and time.monotonic() < until:
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                traffic.one()
                due += interval

    workers = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def sample_memory(server: Server, rec: Recorder, every_s: float, stop: threading.Event) -> None:
    """Record every server process's RSS every ``every_s`` seconds until ``stop``."""
    while not stop.wait(every_s):
        rss = {}
        for pid in server.pids():
            found = rss_bytes(pid)
            if found is not None:
                rss[role_of(pid, server)] = found
        rec.memory(rss)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def summarise(rec: Recorder, *, rss_bound_mib: float) -> dict[str, Any]:
    """Per-minute figures and the pass criteria."""
    minutes = [rec.minutes[m] for m in sorted(rec.minutes)]
    per_minute = [
        {
            "minute": n,
            "requests": len(m.latencies_ms),
            "errors": m.errors,
            "p50_ms": round(_percentile(m.latencies_ms, 0.5), 1),
            "p99_ms": round(_percentile(m.latencies_ms, 0.99), 1),
            "load": m.load,
            "rss_mib": {role: round(b / MIB, 1) for role, b in sorted(m.rss.items())},
        }
        for n, m in enumerate(minutes)
    ]
    # The last (partial) minute may be a few requests: leave it out of the windows.
    full = minutes[:-1] if len(minutes) > 2 else minutes
    window = max(1, min(10, len(full) // 2))
    last = full[-window:]
    first = full[1 : 1 + window] or full[:window]
    growth: dict[str, float] = {}
    # RSS growth: the last sample against the last one taken a window earlier (or the first).
    end_at, end_rss = rec.samples[-1] if rec.samples else (0.0, {})
    earlier = [rss for at, rss in rec.samples if at <= end_at - window * 60]
    start_rss = earlier[-1] if earlier else (rec.samples[0][1] if rec.samples else {})
    for role, end in end_rss.items():
        if role in start_rss:
            growth[role] = round((end - start_rss[role]) / MIB, 1)
    p99_first = _percentile([x for m in first for x in m.latencies_ms], 0.99)
    p99_last = _percentile([x for m in last for x in m.latencies_ms], 0.99)
    errors = sum(m.errors for m in minutes)
    requests = sum(len(m.latencies_ms) for m in minutes)
    criteria = {
        "no_error": errors == 0,
        "memory_flat": bool(growth) and all(g < rss_bound_mib for g in growth.values()),
        "p99_steady": p99_last <= 2 * p99_first,
    }
    return {
        "requests": requests,
        "errors": errors,
        "replays": rec.replays,
        "error_samples": rec.error_samples,
        "kinds": dict(
            sorted(
                {
                    k: sum(m.kinds.get(k, 0) for m in minutes) for m in minutes for k in m.kinds
                }.items()
            )
        ),
        "p50_ms": round(statistics.median(x for m in minutes for x in m.latencies_ms), 1)
        if requests
        else None,
        "p99_ms": round(_percentile([x for m in minutes for x in m.latencies_ms], 0.99), 1),
        "window_minutes": window,
        "rss_growth_last_window_mib": growth,
        "rss_bound_mib": rss_bound_mib,
        "p99_first_window_ms": round(p99_first, 1),
        "p99_last_window_ms": round(p99_last, 1),
        "criteria": criteria,
        "passed": all(criteria.values()),
        "per_minute": per_minute,
    }


def _closes(bench_sessions: Any) -> dict[str, Any]:
    with transaction(bench_sessions) as s:
        periods = s.scalar(select(func.count()).select_from(Period)) or 0
        statements = s.scalar(select(func.count()).select_from(Statement)) or 0
    return {"periods_closed": int(periods), "statements_issued": int(statements)}


def _check(url: str) -> dict[str, Any]:
    env = {**os.environ, "COALITION_DATABASE_URL": url, "COALITION_SECRET_KEY": "x" * 43}
    done = subprocess.run(
        [sys.executable, "-m", "cli", "check", "--json"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return {"exit": done.returncode, "ok": done.returncode == 0}


def log_errors(text: str) -> list[str]:
    """The server's log lines at error level or above, or with a traceback (first 20)."""
    found = []
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            bad = "Traceback" in line or "ERROR" in line
        else:
            bad = doc.get("level") in ("error", "critical") or "exc" in doc
        if bad:
            found.append(line[:500])
    return found[:20]


def lines(result: dict[str, Any]) -> list[str]:
    """The run as plain-text lines."""
    s = result["summary"]
    out = [
        f"soak: {result['minutes']} min, {result['rate']} steps/s over {result['threads']} "
        f"threads, coalition serve --workers {result['workers']} with its scheduler "
        f"(daily cycle in {result['timezone']}, close due {result['close_due']})",
        f"  requests {s['requests']} ({s['kinds']}), errors {s['errors']}, "
        f"replays answered as replays {s['replays']}",
        f"  latency p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms; p99 minutes "
        f"2-{1 + s['window_minutes']} {s['p99_first_window_ms']} ms, "
        f"last {s['window_minutes']} min {s['p99_last_window_ms']} ms",
        f"  RSS growth over the last {s['window_minutes']} min (MiB): "
        f"{s['rss_growth_last_window_mib']} (bound {s['rss_bound_mib']})",
        f"  closes: {result['closes']}; coalition check: {result['check']}",
        "  minute  requests  errors  p50 ms  p99 ms  load  RSS MiB",
    ]
    for m in s["per_minute"]:
        out.append(
            f"  {m['minute']:>6}  {m['requests']:>8}  {m['errors']:>6}  {m['p50_ms']:>6}  "
            f"{m['p99_ms']:>6}  {m['load']:>4.1f}  {m['rss_mib']}"
        )
    out.append("  criteria: " + ", ".join(f"{k} {v}" for k, v in s["criteria"].items()))
    out.append("  PASSED" if result["passed"] else "  FAILED")
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the run (30)")
    parser.add_argument("--rate", type=float, default=30.0, help="mix steps per second (30)")
    parser.add_argument("--threads", type=int, default=8, help="client threads (8)")
    parser.add_argument("--workers", type=int, default=2, help="`coalition serve --workers` (2)")
    parser.add_argument("--members", type=int, default=1000, help="members (1000)")
    parser.add_argument("--sample", type=float, default=10.0, help="RSS sampling, seconds (10)")
    parser.add_argument(
        "--rss-bound-mib",
        type=float,
        default=10.0,
        help="allowed RSS growth per process over the last window (10 MiB)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; print the figures; exit 1 unless every criterion holds."""
    args = _parser().parse_args(argv)
    url = server_url()
    zone, close_due = close_zone(datetime.now(UTC))
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(
            ["python -m bench.soak", *(argv if argv is not None else sys.argv[1:])]
        ),
        "minutes": args.minutes,
        "rate": args.rate,
        "threads": args.threads,
        "workers": args.workers,
        "timezone": zone,
        "close_due": close_due.isoformat(timespec="minutes"),
    }
    with (
        scratch_database(url, f"coalition_soak_{os.getpid()}") as soak_url,
        tempfile.TemporaryDirectory(prefix="coalition-soak-") as logs,
    ):
        rendered = soak_url.render_as_string(hide_password=False)
        _say(f"preparing {args.members} members ...")
        bench = prepare(rendered, members=args.members)
        try:
            with transaction(bench.ops.sessions) as s:
                new = create_key(
                    s, secret_key=SECRET_KEY, role="partner", partner_id=bench.partner_id,
                    alg="hmac-sha256", scopes=["earn", "burn", "read", "statements"],
                    public_key=None, expires_at=None, now=utcnow(),
                )  # fmt: skip
            if new.secret is None:
                raise RuntimeError("an hmac key has a secret")
            environment = {"COALITION_SETTLEMENT_CYCLE": "daily", "COALITION_TIMEZONE": zone}
            log = Path(logs) / "serve.log"
            with serve(
                soak_url, workers=args.workers, log=log, scheduler=True, environment=environment
            ) as server:
                started = time.monotonic()
                rec = Recorder(started)
                stop = threading.Event()
                sampler = threading.Thread(
                    target=sample_memory, args=(server, rec, args.sample, stop), daemon=True
                )
                sampler.start()
                _say(f"soak: {args.minutes} min at {args.rate}/s; close due {close_due} ({zone})")
                drive(
                    server, (new.key.id, new.secret), bench.members, rate=args.rate,
                    threads=args.threads, until=started + args.minutes * 60, rec=rec,
                )  # fmt: skip
                stop.set()
                sampler.join()
                served_log = log.read_text(errors="replace")
            result["summary"] = summarise(rec, rss_bound_mib=args.rss_bound_mib)
            result["closes"] = _closes(bench.ops.sessions)
            result["check"] = _check(rendered)
            result["server_log_errors"] = log_errors(served_log)
        finally:
            bench.engine.dispose()
    result["passed"] = (
        result["summary"]["passed"] and result["check"]["ok"] and not result["server_log_errors"]
    )
    for line in lines(result):
        print(line)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.output}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
