"""A database outage under signed load: while PostgreSQL cannot be reached every request is a
``503 unavailable`` problem document within a bound (no hang, no 500); the service recovers by
itself when the database returns; nothing is half-written (a retry with the same
Idempotency-Key lands exactly once) and every ledger invariant holds.

The outage is a TCP proxy between the app and the test's own PostgreSQL database that stops
(its port refuses connections, its open connections are cut), as a stopped server looks to
the app; the shared PostgreSQL server itself is never touched.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from sqlalchemy import make_url

from coalition.check import run_checks
from coalition.db import make_engine, session_factory, transaction
from tests.api.conftest import Live, Partner, ok, serve
from tests.conftest import _pg_clone, _pg_drop, require_postgres

OUTAGE_S = 10.0
#: The longest any answer may take during the outage (connect and pool timeouts are 5 s).
ANSWER_BOUND_S = 12.0
#: How long the service may take to answer again once the database is back.
RECOVERY_BOUND_S = 15.0
WORKERS = 4
BACKOFF_S = 0.5
#: Longer than an Idempotency-Key claim's lease (coalition/idempotency.py).
LEASE_BOUND_S = 60.0


@dataclass
class Proxy:
    """A TCP proxy to PostgreSQL that can be stopped and started again on the same port."""

    upstream: tuple[str, int]
    port: int = 0
    _listener: socket.socket | None = None
    _open: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        assert self._listener is not None
        self._listener.close()
        self._listener = None
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def through_proxy() -> Iterator[tuple[Live, Proxy, str]]:
    require_postgres()
    engine, name = _pg_clone()
    direct = engine.url
    engine.dispose()
    proxy = Proxy((direct.host or "127.0.0.1", direct.port or 5432))
    proxy.start()
    via_proxy = make_url(direct).set(host="127.0.0.1", port=proxy.port)
    try:
        for live in serve(via_proxy.render_as_string(hide_password=False), "postgres"):
            yield live, proxy, direct.render_as_string(hide_password=False)
    finally:
        _pg_drop(name)


@dataclass
class Sent:
    body: dict[str, Any]
    idempotency_key: str
    status: int
    elapsed_s: float
    kind: str | None


def _earn(partner: Partner, member: str, results: list[Sent], stop: threading.Event) -> None:
    while not stop.is_set():
        body = {
            "member_id": member,
            "reference": str(uuid.uuid4()),
            "amount": "1",
            "currency": "EUR",
        }
        key = str(uuid.uuid4())
        started = time.monotonic()
        try:
            response = partner.client.post("/v1/earns", body, idempotency_key=key)
        except requests.RequestException as e:  # the server must answer, never drop the request
            results.append(Sent(body, key, -1, time.monotonic() - started, type(e).__name__))
            continue
        kind = None
        if response.status_code >= 400:
            assert response.headers["Content-Type"].startswith("application/problem+json")
            kind = response.json()["type"]
        results.append(Sent(body, key, response.status_code, time.monotonic() - started, kind))
        if response.status_code == 503:
            # a client backing off, as Retry-After asks (shortened: the outage is 10 s)
            assert int(response.headers["Retry-After"]) >= 1
            stop.wait(BACKOFF_S)


def test_an_outage_is_503_within_a_bound_and_the_service_recovers(
    through_proxy: tuple[Live, Proxy, str],
) -> None:
    live, proxy, direct_url = through_proxy
    partner = live.partner("EUR")
    member = live.member(partner)
    results: list[Sent] = []
    stop = threading.Event()
    with ThreadPoolExecutor(WORKERS) as pool:
        for _ in range(WORKERS):
            pool.submit(_earn, partner, member, results, stop)
        time.sleep(1.0)  # load before the outage
        proxy.stop()
        down_at = time.monotonic()
        time.sleep(OUTAGE_S)
        proxy.start()
        up_at = time.monotonic()
        deadline = up_at + RECOVERY_BOUND_S
        while time.monotonic() < deadline and not any(r.status == 201 for r in results[-WORKERS:]):
            time.sleep(0.1)
        time.sleep(1.0)  # load after the recovery
        stop.set()
    statuses = {r.status for r in results}
    assert statuses <= {201, 503}, sorted(
        (r.status, r.kind) for r in results if r.status not in (201, 503)
    )
    failed = [r for r in results if r.status == 503]
    assert failed, "the outage was seen"
    assert all(r.kind == "/problems/unavailable" for r in failed)
    assert max(r.elapsed_s for r in results) < ANSWER_BOUND_S
    assert results[-1].status == 201, "the service recovered by itself"
    assert down_at < up_at

    # Nothing half-written: a retry of each failed earn (same Idempotency-Key) lands once.
    # A claim the outage kept from being released answers 409 in-use until its lease runs
    # out; the client waits as Retry-After says.
    for r in failed:
        retry_until = time.monotonic() + LEASE_BOUND_S
        while True:
            retried = partner.client.post("/v1/earns", r.body, idempotency_key=r.idempotency_key)
            if retried.status_code != 409 or time.monotonic() > retry_until:
                break
            time.sleep(int(retried.headers["Retry-After"]))
        assert retried.status_code == 201, retried.text
    earned = sum(1 for r in results if r.status == 201) + len(failed)
    assert ok(partner.client.get(f"/v1/members/{member}/balance"))["available"] == earned
    engine = make_engine(direct_url)
    try:
        with transaction(session_factory(engine)) as s:
            assert [f for f in run_checks(s) if not f.ok] == []
    finally:
        engine.dispose()
