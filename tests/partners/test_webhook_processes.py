"""The dispatcher as the operator runs it (``coalition worker`` processes on PostgreSQL), against
a receiver on loopback that verifies every delivery with the stock ``standardwebhooks``
library: a worker killed with SIGKILL mid-batch loses nothing, and two workers competing for
the same outbox never send one delivery twice at once."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook

from coalition.db import transaction
from partners.operations import EarnItem
from partners.webhooks.endpoints import Webhooks
from partners.webhooks.tables import WebhookDelivery, WebhookEvent
from tests.api.serving import wait_for
from tests.conftest import Db

pytestmark = pytest.mark.postgres

#: Bounds of the waits below (each waits on an event or polls a condition, never a fixed sleep).
WAIT_S = 90.0


@dataclass
class Receiver:
    """Verifies every POST with the endpoint's secret; counts each ``webhook-id``; notes when a
    ``webhook-id`` arrives while an attempt with the same id is still being answered. While
    ``hold`` is clear it keeps each request unanswered (a dispatcher mid-batch)."""

    server: ThreadingHTTPServer
    secret: str = ""
    seen: Counter[str] = field(default_factory=Counter)
    in_flight: Counter[str] = field(default_factory=Counter)
    overlapping: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(init=False)
    hold: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)
        self.hold.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def wait(self, condition: Any, what: str) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: condition(self), timeout=WAIT_S):
                raise AssertionError(f"timed out after {WAIT_S} s waiting for {what}")


class _Server(ThreadingHTTPServer):
    """socketserver listens with a backlog of 5: two dispatchers' concurrent batches can
    overflow it, a refused connection is a failed attempt, and its retries come 5 s and then 5
    minutes later (the contract's schedule), past the test's bound."""

    request_queue_size = 256


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            r = state["r"]
            length = int(self.headers["content-length"])
            body = self.rfile.read(length)
            if len(body) < length:
                return  # its sender was killed while writing it
            headers = {k.lower(): v for k, v in self.headers.items()}
            msg_id = headers.get("webhook-id", "")
            with r.changed:
                if r.in_flight[msg_id]:
                    r.overlapping.append(msg_id)
                r.in_flight[msg_id] += 1
                r.changed.notify_all()
            try:
                Webhook(r.secret).verify(body, headers)
            except Exception as exc:
                with r.lock:
                    r.unverified.append(f"{msg_id}: {exc!r}")
            r.hold.wait(WAIT_S)
            try:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:
                pass  # the dispatcher that sent it is gone
            with r.changed:
                r.in_flight[msg_id] -= 1
                r.seen[msg_id] += 1
                r.changed.notify_all()

        def log_message(self, *args: Any) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state["r"] = Receiver(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state["r"]
    state["r"].hold.set()
    server.shutdown()
    server.server_close()


def subscribe(db: Db, receiver: Receiver) -> str:
    """An endpoint of a new partner at the receiver, for its earns only; the partner's id."""
    shop = db.partner("EUR")
    with transaction(db.sessions) as s:
        made = Webhooks(db.settings.secret_key, allow_private=True).create(
            s, shop.id, url=receiver.url, events=["transaction.earned"], description=None,
            now=db.clock(),
        )  # fmt: skip
    receiver.secret = made.secret
    return shop.id


def earn(db: Db, partner_id: str, count: int) -> set[str]:
    """``count`` earns, in bulk; the ids of their events."""
    member = db.member()
    items = [EarnItem(member, f"r{i}", "5", "EUR") for i in range(count)]
    for start in range(0, count, 1000):
        db.ops.earn_many(partner_id, items[start : start + 1000])
    with db.sessions() as s:
        return set(s.scalars(select(WebhookEvent.id)))


def worker(db: Db, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    """``coalition worker`` on the test's database, its output in ``tmp_path``."""
    env = {
        **os.environ,
        "COALITION_DATABASE_URL": db.url,
        "COALITION_SECRET_KEY": base64.urlsafe_b64encode(db.settings.secret_key).decode(),
        "COALITION_WEBHOOK_ALLOW_PRIVATE": "true",
        "COALITION_LOG_LEVEL": "WARNING",
    }
    log = (tmp_path / f"{name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "worker"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def statuses(db: Db) -> dict[str, int]:
    with db.sessions() as s:
        rows = s.execute(
            select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)
        ).all()
    return {status: count for status, count in rows}


def test_a_worker_killed_mid_batch_loses_nothing(
    pg: Db, receiver: Receiver, tmp_path: Path
) -> None:
    partner_id = subscribe(pg, receiver)
    events = earn(pg, partner_id, 300)
    receiver.hold.clear()  # the first worker's requests stay unanswered: it is mid-batch
    first = worker(pg, tmp_path, "first")
    try:
        receiver.wait(lambda r: sum(r.in_flight.values()) >= 10, "the first batch to be sent")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        stop(first)
    assert not receiver.seen, "nothing was answered before the kill"
    receiver.hold.set()

    second = worker(pg, tmp_path, "second")
    try:
        receiver.wait(lambda r: events <= set(r.seen), "every event after the restart")
        wait_for(lambda: statuses(pg) == {"delivered": 300}, WAIT_S, "every delivery recorded")
    finally:
        stop(second)
    assert receiver.unverified == []
    assert set(receiver.seen) == events  # at least once each, with the event id as webhook-id


def test_two_workers_never_send_one_delivery_twice_at_once(
    pg: Db, receiver: Receiver, tmp_path: Path
) -> None:
    partner_id = subscribe(pg, receiver)
    events = earn(pg, partner_id, 2000)
    workers = [worker(pg, tmp_path, f"w{i}") for i in range(2)]
    try:
        receiver.wait(lambda r: events <= set(r.seen), "every event")
        wait_for(lambda: statuses(pg) == {"delivered": 2000}, WAIT_S, "every delivery recorded")
    finally:
        for w in workers:
            stop(w)
    assert receiver.overlapping == []
    assert receiver.unverified == []
    assert set(receiver.seen) == events
    assert max(receiver.seen.values()) == 1, "no delivery was sent twice"
