"""The request path against ``coalition serve`` with two worker processes on PostgreSQL:
exactly once across a crash (SIGKILL mid-load, restart, every unanswered request retried at
once with its key), and a revoked key refused by every worker within a second."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from api.client import CoalitionClient, ProblemError
from coalition.db import transaction, utcnow
from coalition.models import Transaction
from partners.keys import b64url, create_key, create_operator_key
from tests.conftest import Db

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
SECRET_KEY = b"r" * 32


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    base_url: str
    port: int
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """SIGKILL to the whole process tree: the supervisor and every worker."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@contextlib.contextmanager
def serve(db: Db, tmp_path: Path, *, port: int | None = None) -> Iterator[Served]:
    """``coalition serve --workers 2 --no-scheduler`` on ``db``, ready to answer."""
    port = port or _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "COALITION_DATABASE_URL": db.url,
        "COALITION_SECRET_KEY": b64url(SECRET_KEY),
        "COALITION_PUBLIC_URL": base,
        # this load is one client's: its failures must not make its address a 429
        "COALITION_RATE_LIMIT_FAILURES_PER_ADDRESS": "0",
    }
    command = [sys.executable, "-m", "cli", "serve", "--port", str(port)]
    log = tmp_path / f"serve-{port}-{uuid.uuid4().hex[:6]}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--workers", "2", "--no-scheduler"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a kill reaches every worker
        )
    served = Served(base, port, process)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{base}/v1/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                served.kill()


def _partner_key(db: Db, partner_id: str, scopes: list[str]) -> tuple[str, str]:
    with transaction(db.sessions) as s:
        new = create_key(
            s,
            secret_key=SECRET_KEY,
            role="partner",
            partner_id=partner_id,
            alg="hmac-sha256",
            scopes=scopes,
            public_key=None,
            expires_at=None,
            now=utcnow(),
        )
    assert new.secret is not None
    return new.key.id, new.secret


def _earns_with(db: Db, references: set[str]) -> dict[str, int]:
    with transaction(db.sessions) as s:
        rows = s.execute(
            select(Transaction.reference, func.count())
            .where(Transaction.kind == "earn", Transaction.reference.in_(references))
            .group_by(Transaction.reference)
        ).all()
    return {str(reference): int(n) for reference, n in rows}


def test_a_crash_under_idempotent_load_leaves_every_earn_exactly_once(
    pg: Db, tmp_path: Path
) -> None:
    partner = pg.partner()
    members = [pg.member() for _ in range(20)]
    key_id, secret = _partner_key(pg, partner.id, ["earn", "read"])
    threads, per_thread = 16, 40
    # Each request: its Idempotency-Key and its body, fixed, so a retry is the same request.
    work = [
        [
            (
                str(uuid.uuid4()),
                {
                    "member_id": members[(t + n) % len(members)],
                    "reference": f"crash-{t}-{n}",
                    "amount": "10.00",
                    "currency": "EUR",
                },
            )
            for n in range(per_thread)
        ]
        for t in range(threads)
    ]
    answered: dict[str, requests.Response] = {}
    unanswered: list[tuple[str, dict[str, str]]] = []
    lock = threading.Lock()
    enough_answers = threading.Event()

    with serve(pg, tmp_path) as first:

        def send_all(items: list[tuple[str, dict[str, str]]]) -> None:
            client = CoalitionClient(first.base_url, key_id, secret=secret, retries=0)
            for n, (key, body) in enumerate(items):
                try:
                    response = client.session.send(
                        client.sign(
                            client.session.prepare_request(
                                requests.Request(
                                    "POST",
                                    first.base_url + "/v1/earns",
                                    json=body,
                                    headers={"Idempotency-Key": key},
                                )
                            )
                        ),
                        timeout=30,
                    )
                except requests.RequestException:  # refused, reset, or cut off mid-answer
                    with lock:
                        unanswered.extend(items[n:])
                    return
                with lock:
                    answered[key] = response
                    if len(answered) >= threads * 4:
                        enough_answers.set()

        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(send_all, items) for items in work]
            assert enough_answers.wait(timeout=120)
            first.kill()  # mid-load: requests in flight die with the workers
            for future in futures:
                future.result()
        port = first.port

    assert unanswered, "the crash came after the load"
    assert all(r.status_code == 201 for r in answered.values()), [
        r.text for r in answered.values() if r.status_code != 201
    ]
    with serve(pg, tmp_path, port=port) as second:
        client = CoalitionClient(second.base_url, key_id, secret=secret, retries=0)

        def retry(item: tuple[str, dict[str, str]]) -> requests.Response:
            key, body = item
            return client.session.send(
                client.sign(
                    client.session.prepare_request(
                        requests.Request(
                            "POST",
                            second.base_url + "/v1/earns",
                            json=body,
                            headers={"Idempotency-Key": key},
                        )
                    )
                ),
                timeout=30,
            )

        with ThreadPoolExecutor(threads) as pool:
            retried = list(pool.map(retry, unanswered))
        # At once, not after a lease: no retry is told the dead request is still running.
        assert [r.status_code for r in retried] == [201] * len(retried), [r.text for r in retried]
        # A request answered before the crash, sent again, gets its first answer.
        some_key, some_first = next(iter(answered.items()))
        body = next(b for items in work for k, b in items if k == some_key)
        again = retry((some_key, body))
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert again.content == some_first.content

    references = {body["reference"] for items in work for _, body in items}
    sent = {body["reference"] for key, body in unanswered} | {
        body["reference"] for items in work for key, body in items if key in answered
    }
    counts = _earns_with(pg, references)
    assert set(counts) == sent  # every request answered or retried took effect...
    assert set(counts.values()) == {1}  # ...exactly once
    pg.assert_ledger_ok()


def test_a_revoked_key_is_refused_by_every_worker_within_a_second(pg: Db, tmp_path: Path) -> None:
    partner = pg.partner()
    member = pg.member(points=10, partner=partner)
    key_id, secret = _partner_key(pg, partner.id, ["read"])
    # ``GET /v1/me`` in a transaction of its own; a balance read most often its one statement
    # alone (coalition.hot.HotStatement.alone): both must see the revocation.
    paths = ["/v1/me", f"/v1/members/{member}/balance"]
    with transaction(pg.sessions) as s:
        operator = create_operator_key(s, secret_key=SECRET_KEY, now=utcnow())
    assert operator.secret is not None
    with serve(pg, tmp_path) as served:
        # A new connection per request, so both worker processes answer (and cache the key).
        def me(n: int) -> int:
            client = CoalitionClient(served.base_url, key_id, secret=secret, retries=0)
            with client:
                try:
                    return client.request("GET", paths[n % 2]).status
                except ProblemError as refused:
                    return refused.status if refused.code == "signature-invalid" else -1

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(me, range(40))) == {200}
        admin = CoalitionClient(served.base_url, operator.key.id, secret=operator.secret)
        revoked = admin.request("POST", f"/v1/admin/keys/{key_id}/revoke", json={})
        assert revoked.status == 200
        revoked_at = time.monotonic()

        results: list[tuple[float, int]] = []

        def probe(_: int) -> None:
            n = 0
            while time.monotonic() < revoked_at + 1.6:
                sent_at = time.monotonic()
                n += 1
                results.append((sent_at - revoked_at, me(n)))

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(probe, range(4)))
    late = [status for after_s, status in results if after_s >= 1.0]
    assert len(late) >= 8 and set(late) == {401}, results
