"""Signed requests over HTTP to ``coalition serve``, the way partners reach the service.

One run: a fresh PostgreSQL database, ``coalition serve --workers N --no-scheduler`` as in
production, one partner (EUR) with an hmac-sha256 key and 1,000 members holding points. For each
scenario, requests are signed *before* the clock starts (RFC 9421, as :class:`api.client
.CoalitionClient` signs them: ``@method`` + ``@target-uri``, ``created``, a nonce, and
``Content-Digest`` for a body), written as raw HTTP/1.1 requests, and replayed over keep-alive
connections by Debian's ``wrk`` with ``bench/http.lua`` (C, a few percent of a core). Right
before each scenario ``pgbench -N`` runs at the same concurrency on the same server, so every
figure is also a ratio measured in the same minute.

Reported per scenario: requests/s, p50/p99 latency, the statuses, the Python CPU per request of
the API processes (``/proc`` times of every process of the server, so the uvicorn workers and
their threads are all in it), PostgreSQL's CPU per request (every ``postgres`` process, read
the same way), each worker's share of the Python CPU (every worker must be busy), and,
for earns, that the database holds exactly as many new earns as there were fresh ``201``
answers. The ``liveness`` row (unsigned ``GET /v1/health/live``: no signature, no database, no
thread) is the floor under every other row: the HTTP server's and the framework's own CPU per
request (one worker may take all its connections: it never waits). Earns and balance reads
then run again paced at half their saturated rate
(``*_half_rate``, beside the same ``pgbench -N`` figure): the latency a partner sees while
the service has room to spare.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import URL, func, select

from api.client import CoalitionClient
from bench.postgres import pgbench_init, pgbench_tps, scratch_database
from bench.throughput import Bench, prepare
from coalition.db import transaction, utcnow
from coalition.models import Transaction
from partners.keys import b64url, create_key
from partners.webhooks.endpoints import Webhooks

LUA = Path(__file__).resolve().parent / "http.lua"
SECRET_KEY = b"b" * 32  # the Settings of bench.throughput.prepare seal with this key
CONNECTIONS = 32
WRK_THREADS = 2
#: Requests signed per second of a run and wrk thread: more than the service can answer.
SIGNED_PER_S = 1500
HOT_MEMBERS = 5
#: The scenarios also run paced at half their saturated rate (the constant-rate rows).
PACED = ("earns", "balances")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Signed:
    """One pre-signed request: the raw bytes wrk sends, and what it is."""

    raw: bytes
    kind: str


def _require_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed: `apt-get install wrk` (Debian's package)")
    return wrk


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """``coalition serve`` on a scratch database, stopped on the way out."""

    process: subprocess.Popen[bytes]
    base_url: str
    port: int

    def pids(self) -> list[int]:
        """The server's processes: the supervisor and every descendant (the workers)."""
        found = [self.process.pid]
        for pid in found:
            children = Path(f"/proc/{pid}/task/{pid}/children")
            with contextlib.suppress(OSError):
                found += [int(c) for c in children.read_text().split()]
        return found


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _postgres_cpu_s() -> float:
    """CPU seconds of every PostgreSQL process on this machine so far (its backends, the WAL
    writer, the checkpointer...): what the server spends, read off ``/proc`` as for the API's
    processes. Backends that exited meanwhile are not counted: the service's pool keeps its
    connections, so within a run they stay."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().startswith("postgres"):
                    total += _cpu_s(int(entry.name))
    return total


def service_environment(url: URL, public_url: str) -> dict[str, str]:
    """The service's settings for a bench on ``url``'s database, answering at ``public_url``
    (``coalition serve``, or the application built in-process)."""
    return {
        "COALITION_DATABASE_URL": url.render_as_string(hide_password=False),
        "COALITION_SECRET_KEY": b64url(SECRET_KEY),
        "COALITION_PUBLIC_URL": public_url,
        # One client sends everything: counted like any key, never limited.
        "COALITION_RATE_LIMIT_PER_KEY": str(10**9),
    }


@contextlib.contextmanager
def serve(
    url: URL,
    *,
    workers: int,
    log: Path,
    scheduler: bool = False,
    environment: dict[str, str] | None = None,
) -> Iterator[Server]:
    """Run ``coalition serve --workers N`` against ``url`` (``--no-scheduler`` unless
    ``scheduler``; ``environment``: further settings); wait until ready."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, **service_environment(url, base), **(environment or {})}
    command = [sys.executable, "-m", "cli", "serve", "--port", str(port),
               "--workers", str(workers)]  # fmt: skip
    if not scheduler:
        command.append("--no-scheduler")
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(process, base, port)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"coalition serve exited:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{base}/v1/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("coalition serve did not become ready in 60 s")
            time.sleep(0.2)
        while len(server.pids()) < workers + 1:  # every worker up
            time.sleep(0.1)
        yield server
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _raw(prepared: requests.PreparedRequest, port: int) -> bytes:
    """The prepared request as HTTP/1.1 bytes on a keep-alive connection."""
    path = prepared.path_url
    body = prepared.body or b""
    if isinstance(body, str):
        body = body.encode()
    lines = [f"{prepared.method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    for name, value in prepared.headers.items():
        if name.lower() not in ("host", "content-length", "connection"):
            lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Signer:
    """Signs requests exactly as the project's client does, without sending them."""

    def __init__(self, server: Server, key_id: str, secret: str) -> None:
        self.server = server
        self.client = CoalitionClient(server.base_url, key_id, secret=secret)
        self.refs = iter(range(1, 1 << 62))

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        if method == "POST":
            headers["Idempotency-Key"] = str(uuid.uuid4())
        prepared = requests.Request(
            method, self.server.base_url + path, headers=headers, data=data
        ).prepare()
        return _raw(self.client.sign(prepared), self.server.port)

    def earn(self, member: str) -> Signed:
        ref = f"bench-earn-{next(self.refs)}"
        body = {"member_id": member, "reference": ref, "amount": "12.34", "currency": "EUR"}
        return Signed(self.request("POST", "/v1/earns", body), "earn")

    def burn(self, member: str) -> Signed:
        ref = f"bench-burn-{next(self.refs)}"
        body = {"member_id": member, "reference": ref, "points": 1}
        return Signed(self.request("POST", "/v1/burns", body), "burn")

    def balance(self, member: str) -> Signed:
        return Signed(self.request("GET", f"/v1/members/{member}/balance"), "balance")

    def liveness(self) -> Signed:
        """``GET /v1/health/live``, unsigned: no signature, no database, no thread."""
        raw = f"GET /v1/health/live HTTP/1.1\r\nHost: 127.0.0.1:{self.server.port}\r\n\r\n"
        return Signed(raw.encode(), "liveness")


Scenario = Callable[[Signer, random.Random, list[str]], Signed]


def _earns(signer: Signer, rng: random.Random, members: list[str]) -> Signed:
    return signer.earn(rng.choice(members))


def _burns(signer: Signer, rng: random.Random, members: list[str]) -> Signed:
    return signer.burn(rng.choice(members))


def _balances(signer: Signer, rng: random.Random, members: list[str]) -> Signed:
    return signer.balance(rng.choice(members))


def _hot(signer: Signer, rng: random.Random, members: list[str]) -> Signed:
    return signer.earn(rng.choice(members[:HOT_MEMBERS]))


def _liveness(signer: Signer, _rng: random.Random, _members: list[str]) -> Signed:
    return signer.liveness()


def _mix(signer: Signer, rng: random.Random, members: list[str]) -> Signed:
    roll = rng.random()
    member = rng.choice(members)
    if roll < 0.5:
        return signer.earn(member)
    if roll < 0.7:
        return signer.burn(member)
    return signer.balance(member)


SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "earns": ("signed earns, 1,000 members", _earns),
    "burns": ("signed burns, 1,000 members", _burns),
    "balances": ("signed balance reads, 1,000 members", _balances),
    "hot_member": (f"signed earns, all on {HOT_MEMBERS} members", _hot),
    "mix": ("50% earns, 20% burns, 30% balance reads", _mix),
    # The floor of every row: the HTTP server, Litestar, the request's log line and metrics.
    "liveness": ("unsigned GET /v1/health/live (server and framework alone)", _liveness),
}


def _wrk(server: Server, directory: Path, seconds: int, rate: float | None) -> dict[str, Any]:
    """wrk over the requests in ``directory``; ``rate``: paced at about that many requests a
    second in all (each connection waits ``CONNECTIONS / rate`` between its requests, wrk's
    ``delay()`` hook), else as fast as the service answers."""
    script, args = LUA, [str(directory)]
    if rate is not None:
        script = directory / "paced.lua"
        script.write_text(f'dofile("{LUA}")\nfunction delay() return {_pause_ms(rate)} end\n')
    done = subprocess.run(
        [_require_wrk(), f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s",
         "--timeout", "10s", "-s", str(script), server.base_url, "--", *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    for line in done.stdout.splitlines():
        if line.startswith("WRK-JSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("WRK-JSON "))
            return result
    raise RuntimeError(f"wrk failed:\n{done.stdout}\n{done.stderr}")


def _pause_ms(rate: float) -> int:
    """A connection's pause between requests for ``rate`` requests a second over all of them
    (the answer's own time comes on top: at half the saturated rate it is a few percent)."""
    return max(1, round(CONNECTIONS * 1000 / rate))


def _earns_in_db(bench: Bench) -> int:
    with transaction(bench.ops.sessions) as s:
        count = s.scalar(
            select(func.count())
            .select_from(Transaction)
            .where(Transaction.kind == "earn", Transaction.reference.like("bench-earn-%"))
        )
    return int(count or 0)


def subscribe(bench: Bench) -> None:
    """Give the bench partner one endpoint subscribed to every event (nothing listens there:
    the dispatcher is not running, this is the outbox's cost on the request path)."""
    with transaction(bench.ops.sessions) as s:
        Webhooks(SECRET_KEY, allow_private=True).create(
            s, bench.partner_id, url="http://127.0.0.1:9/hooks", events=None,
            description=None, now=utcnow(),
        )  # fmt: skip


def run_scenario(
    name: str,
    server: Server,
    signer: Signer,
    bench: Bench,
    pgbench_url: URL,
    seconds: int,
    *,
    rate: float | None = None,
    tps: float | None = None,
) -> dict[str, Any]:
    """pgbench -N, then one scenario through wrk: the figures of one row (``rate``: paced at
    that many requests a second, :func:`_wrk`; ``tps``: the pgbench -N figure already
    measured for it, not measured again)."""
    label, make = SCENARIOS[name]
    if tps is None:
        tps = pgbench_tps(pgbench_url, clients=CONNECTIONS, seconds=seconds, threads=WRK_THREADS)
    rng = random.Random(name)
    per_thread = SIGNED_PER_S * seconds
    with tempfile.TemporaryDirectory(prefix="coalition-bench-") as tmp:
        directory = Path(tmp)
        kinds: dict[str, int] = {}
        for thread in range(WRK_THREADS):
            with (directory / f"requests-{thread}.bin").open("wb") as out:
                for _ in range(per_thread):
                    signed = make(signer, rng, bench.members)
                    kinds[signed.kind] = kinds.get(signed.kind, 0) + 1
                    out.write(b"%d\n" % len(signed.raw) + signed.raw)
        earns_before = _earns_in_db(bench)
        pids = server.pids()
        cpu_before = {pid: _cpu_s(pid) for pid in pids}
        postgres_before = _postgres_cpu_s()
        wrk = _wrk(server, directory, seconds, rate)
        cpu = {pid: _cpu_s(pid) - cpu_before[pid] for pid in pids}
        postgres_cpu = _postgres_cpu_s() - postgres_before
    # Requests wrk sent but had no answer to when it stopped may still commit: wait for them.
    earns_after = _earns_in_db(bench)
    for _ in range(50):
        time.sleep(0.1)
        earns_after, settled = _earns_in_db(bench), earns_after
        if earns_after == settled:
            break
    seconds_run = wrk["duration_us"] / 1e6
    answered = wrk["requests"]
    statuses = {k: int(v) for k, v in wrk["statuses"].items()}
    fresh_201 = statuses.get("201", 0) - int(wrk["replayed"].get("201", 0))
    total_cpu = sum(cpu.values())
    result: dict[str, Any] = {
        "label": label,
        "pgbench_tps": round(tps, 1),
        "requests_per_s": round(answered / seconds_run, 1),
        "ratio_to_pgbench": round(answered / seconds_run / tps, 4),
        "p50_ms": round(wrk["p50_us"] / 1000, 2),
        "p99_ms": round(wrk["p99_us"] / 1000, 2),
        "statuses": statuses,
        "replayed": wrk["replayed"],
        "wrapped": wrk["wrapped"],
        "socket_errors": wrk["socket_errors"],
        "cpu_ms_per_request": round(total_cpu * 1000 / max(answered, 1), 3),
        "postgres_cpu_ms_per_request": round(postgres_cpu * 1000 / max(answered, 1), 3),
        "cpu_share_per_process": sorted(
            (round(c / total_cpu, 3) for c in cpu.values() if total_cpu), reverse=True
        ),
    }
    if rate is not None:
        result["paced_at_per_s"] = round(rate, 1)
    if name in ("earns", "hot_member"):
        # Every fresh 201 is an earn in the database, and every earn in the database was either
        # answered 201 or still unanswered when wrk stopped (sent - answered).
        written = earns_after - earns_before
        unanswered = int(wrk["sent"]) - answered
        result["earns_written"] = written
        result["fresh_201"] = fresh_201
        result["unanswered"] = unanswered
        result["earns_match_201"] = fresh_201 <= written <= fresh_201 + unanswered
    return result


def partner_key(bench: Bench) -> tuple[str, str]:
    """An HMAC key of the bench partner with the scopes every scenario needs: (id, secret)."""
    with transaction(bench.ops.sessions) as s:
        new = create_key(
            s, secret_key=SECRET_KEY, role="partner", partner_id=bench.partner_id,
            alg="hmac-sha256", scopes=["earn", "burn", "read"], public_key=None,
            expires_at=None, now=utcnow(),
        )  # fmt: skip
    if new.secret is None:
        raise RuntimeError("an HMAC key is created with its secret")
    return new.key.id, new.secret


def measure_http(url: URL, *, seconds: int, workers: int, members: int) -> dict[str, Any]:
    """Every scenario against one ``coalition serve`` on a scratch database of ``url``."""
    name = f"coalition_bench_http_{os.getpid()}"
    results: dict[str, Any] = {"workers": workers, "connections": CONNECTIONS, "scenarios": {}}
    with (
        scratch_database(url, f"{name}_pgbench") as pgbench_url,
        scratch_database(url, name) as bench_url,
        tempfile.TemporaryDirectory(prefix="coalition-serve-") as logs,
    ):
        pgbench_init(pgbench_url)
        bench = prepare(bench_url.render_as_string(hide_password=False), members=members)
        try:
            key_id, secret = partner_key(bench)
            with serve(bench_url, workers=workers, log=Path(logs) / "serve.log") as server:
                signer = Signer(server, key_id, secret)
                for scenario in SCENARIOS:
                    print(f"http: {scenario}, {seconds} s ...", file=sys.stderr, flush=True)
                    results["scenarios"][scenario] = run_scenario(
                        scenario, server, signer, bench, pgbench_url, seconds
                    )
                # The same earns once the partner has a subscribed endpoint: each earn now
                # writes its event and a delivery in its transaction (the dispatcher is not
                # running: this is the cost of the outbox on the request path).
                subscribe(bench)
                print(f"http: earns with an endpoint, {seconds} s ...", file=sys.stderr, flush=True)
                results["scenarios"]["earns_webhook"] = run_scenario(
                    "earns", server, signer, bench, pgbench_url, seconds
                )
                # At a constant rate, half of what each ran at saturated: the latency a partner
                # sees on a service with room to spare (issue 20: p99 under 20 ms).
                for scenario in PACED:
                    saturated = results["scenarios"][scenario]
                    rate = saturated["requests_per_s"] / 2
                    print(f"http: {scenario} at {rate:.0f}/s, {seconds} s ...", file=sys.stderr)
                    results["scenarios"][f"{scenario}_half_rate"] = run_scenario(
                        scenario, server, signer, bench, pgbench_url, seconds, rate=rate,
                        tps=saturated["pgbench_tps"],
                    )  # fmt: skip
            with_endpoint = results["scenarios"]["earns_webhook"]["requests_per_s"]
            spread = results["scenarios"]["earns"]["requests_per_s"]
            results["webhook_to_none"] = round(with_endpoint / spread, 3) if spread else None
            hot = results["scenarios"]["hot_member"]["requests_per_s"]
            results["hot_to_spread"] = round(hot / spread, 3) if spread else None
        finally:
            bench.engine.dispose()
    return results


def table(results: dict[str, Any]) -> list[str]:
    """The HTTP figures as plain-text rows."""
    lines = [
        f"HTTP: coalition serve --workers {results['workers']}, {results['connections']} "
        "keep-alive connections (wrk), pgbench -N at the same concurrency before each row"
    ]
    for name, r in results["scenarios"].items():
        check = r.get("earns_match_201")
        lines.append(
            f"  {name:<11} {r['requests_per_s']:>7.0f} /s  {r['ratio_to_pgbench']:.3f} x pgbench "
            f"({r['pgbench_tps']:.0f} tps)  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  "
            f"CPU {r['cpu_ms_per_request']:.2f} ms/req "
            f"(PostgreSQL {r['postgres_cpu_ms_per_request']:.2f})  "
            f"shares {r['cpu_share_per_process']}  "
            f"statuses {r['statuses']}" + ("" if check is None else f"  earns match 201s: {check}")
        )
    lines.append(f"  hot member / spread earns: {results['hot_to_spread']}")
    lines.append(f"  earns with one endpoint / without: {results.get('webhook_to_none')}")
    return lines
