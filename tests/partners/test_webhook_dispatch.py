"""The dispatcher against a real receiver on loopback that verifies every delivery with the
stock ``standardwebhooks`` library: retries keep the ``webhook-id``, a 410 disables the
endpoint, the SSRF check runs again at delivery, both secrets sign during a rotation."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from svix.webhooks import Webhook as SvixWebhook

from coalition.db import transaction
from partners.models import Partner
from partners.webhooks.delivery import RETRY_SCHEDULE_S, Dispatcher
from partners.webhooks.endpoints import Webhooks, health
from partners.webhooks.outbox import purge
from partners.webhooks.tables import WebhookDelivery, WebhookEndpoint, WebhookEvent
from tests.conftest import Db


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server on loopback: answers each POST with the next of ``statuses`` (then 200);
    a status of 0 keeps that request unanswered until ``release`` is set."""

    server: ThreadingHTTPServer
    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def verified(self, secret: str) -> list[dict[str, Any]]:
        """Every body received, each verified with ``secret`` by ``standardwebhooks``."""
        return [Webhook(secret).verify(r.body, r.headers) for r in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["content-length"])
            body = self.rfile.read(length)
            r = state["r"]
            with r.lock:
                r.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                status = r.statuses.pop(0) if r.statuses else 200
            if status == 0:
                r.release.wait(30)
                return
            self.send_response(status)
            if status == 503:
                self.send_header("Retry-After", "120")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["r"] = Receiver(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state["r"]
    state["r"].release.set()
    server.shutdown()
    server.server_close()


def register(db: Db, partner: Partner, url: str) -> tuple[str, str]:
    """An endpoint of ``partner`` at ``url``: (id, secret)."""
    with transaction(db.sessions) as s:
        made = Webhooks(db.settings.secret_key, allow_private=True).create(
            s, partner.id, url=url, events=None, description=None, now=db.clock()
        )
        return made.endpoint.id, made.secret


def dispatcher(db: Db, *, allow_private: bool = True) -> Dispatcher:
    db.configure(webhook_allow_private=allow_private)
    return Dispatcher(db.settings, db.sessions, clock=db.clock)


def deliveries(db: Db) -> list[WebhookDelivery]:
    with db.sessions() as s:
        return list(s.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def earn(db: Db, partner: Partner, reference: str = "e1") -> str:
    member = db.member()
    posted = db.ops.earn(partner.id, member_id=member, reference=reference, amount="7",
                         currency="EUR")  # fmt: skip
    return posted.transaction.id


def test_a_delivery_verifies_with_the_stock_libraries(db: Db, receiver: Receiver) -> None:
    shop = db.partner("EUR")
    _, secret = register(db, shop, receiver.url)
    txn = earn(db, shop)
    assert dispatcher(db).run() == 1

    [payload] = receiver.verified(secret)
    assert payload["type"] == "transaction.earned"
    assert payload["data"]["id"] == txn
    [got] = receiver.received
    SvixWebhook(secret).verify(got.body, got.headers)  # raises WebhookVerificationError if not
    assert got.headers["webhook-id"] == payload["id"]
    [delivery] = deliveries(db)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)
    assert delivery.next_attempt_at is None
    assert dispatcher(db).run() == 0  # nothing is sent twice


def test_failures_are_retried_on_schedule_with_the_same_webhook_id(
    db: Db, receiver: Receiver
) -> None:
    shop = db.partner("EUR")
    _, secret = register(db, shop, receiver.url)
    earn(db, shop)
    receiver.statuses = [500, 503]
    d = dispatcher(db)
    assert d.run() == 1
    [delivery] = deliveries(db)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 500)
    assert delivery.next_attempt_at is not None
    wait = (delivery.next_attempt_at - db.clock()).total_seconds()
    assert RETRY_SCHEDULE_S[1] <= wait <= RETRY_SCHEDULE_S[1] * 1.1
    assert d.run() == 0  # not due yet

    db.clock.advance(seconds=6)
    assert d.run() == 1  # a 503 with Retry-After: 120, sooner than the schedule's 5 min
    [delivery] = deliveries(db)
    assert delivery.attempts == 2 and delivery.last_status_code == 503
    db.clock.advance(seconds=RETRY_SCHEDULE_S[2] * 1.1 + 1)
    assert d.run() == 1
    [delivery] = deliveries(db)
    assert (delivery.status, delivery.attempts) == ("delivered", 3)
    ids = {r.headers["webhook-id"] for r in receiver.received}
    assert len(receiver.received) == 3 and len(ids) == 1
    assert len(receiver.verified(secret)) == 3


def test_retry_after_later_than_the_schedule_is_honoured(db: Db, receiver: Receiver) -> None:
    shop = db.partner("EUR")
    register(db, shop, receiver.url)
    earn(db, shop)
    receiver.statuses = [503]  # Retry-After: 120, the schedule says 5 s
    dispatcher(db).run()
    [delivery] = deliveries(db)
    assert delivery.next_attempt_at is not None
    assert (delivery.next_attempt_at - db.clock()).total_seconds() >= 120


def test_a_spent_schedule_fails_the_delivery(db: Db, receiver: Receiver) -> None:
    shop = db.partner("EUR")
    register(db, shop, receiver.url)
    earn(db, shop)
    receiver.statuses = [500] * len(RETRY_SCHEDULE_S)
    d = dispatcher(db)
    for _ in RETRY_SCHEDULE_S:
        assert d.run() == 1
        db.clock.advance(hours=12)
    [delivery] = deliveries(db)
    assert (delivery.status, delivery.attempts) == ("failed", len(RETRY_SCHEDULE_S))
    assert d.run() == 0


def test_a_410_disables_the_endpoint(db: Db, receiver: Receiver) -> None:
    shop = db.partner("EUR")
    endpoint_id, _ = register(db, shop, receiver.url)
    earn(db, shop, "a")
    receiver.statuses = [410]
    dispatcher(db).run()
    earn(db, shop, "b")  # the endpoint is disabled: no delivery for it any more
    assert dispatcher(db).run() == 0
    with db.sessions() as s:
        endpoint = s.get(WebhookEndpoint, endpoint_id)
        assert endpoint is not None and endpoint.disabled and endpoint.disabled_reason
    assert [d.status for d in deliveries(db)] == ["failed"]
    assert len(receiver.received) == 1


def test_a_timeout_is_recorded_and_retried_with_the_same_webhook_id(
    db: Db, receiver: Receiver
) -> None:
    shop = db.partner("EUR")
    register(db, shop, receiver.url)
    earn(db, shop)
    receiver.statuses = [0]  # the first attempt gets no answer
    d = dispatcher(db)
    d.timeout_s = 0.5
    assert d.run() == 1
    receiver.release.set()
    [delivery] = deliveries(db)
    assert (delivery.status, delivery.last_status_code) == ("pending", None)
    assert delivery.last_error == "timed out after 0.5 s"
    db.clock.advance(seconds=6)
    assert d.run() == 1
    [delivery] = deliveries(db)
    assert delivery.status == "delivered"
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


def test_a_refused_connection_is_recorded_and_retried(db: Db, receiver: Receiver) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    shop = db.partner("EUR")
    register(db, shop, f"http://127.0.0.1:{closed_port}/hooks")
    earn(db, shop)
    dispatcher(db).run()
    [delivery] = deliveries(db)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, None)
    assert delivery.last_error


def test_the_address_is_checked_again_at_delivery(db: Db, receiver: Receiver) -> None:
    shop = db.partner("EUR")
    register(db, shop, receiver.url)  # registered while private addresses were allowed
    earn(db, shop)
    dispatcher(db, allow_private=False).run()
    assert receiver.received == []
    [delivery] = deliveries(db)
    assert delivery.status == "pending" and delivery.last_error
    assert delivery.last_error.startswith("refused")


def test_an_earn_that_rolled_back_sends_nothing(db: Db, receiver: Receiver) -> None:
    shop = db.partner("EUR")
    register(db, shop, receiver.url)
    member = db.member()

    def failing() -> None:
        with transaction(db.sessions) as s:
            db.ops.earn(shop.id, member_id=member, reference="x", amount="5", currency="EUR",
                        session=s)  # fmt: skip
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        failing()
    assert dispatcher(db).run() == 0
    assert receiver.received == []


def test_another_partner_never_receives_the_event(db: Db, receiver: Receiver) -> None:
    shop, other = db.partner("EUR", name="Shop"), db.partner("EUR", name="Other")
    register(db, other, receiver.url)
    earn(db, shop)
    assert dispatcher(db).run() == 0
    assert receiver.received == []


def test_during_a_rotation_both_secrets_verify_then_only_the_new_one(
    db: Db, receiver: Receiver
) -> None:
    shop = db.partner("EUR")
    endpoint_id, old = register(db, shop, receiver.url)
    hooks = Webhooks(db.settings.secret_key, allow_private=True)
    with transaction(db.sessions) as s:
        new = hooks.rotate(s, shop.id, endpoint_id, now=db.clock()).secret
    earn(db, shop, "a")
    dispatcher(db).run()
    assert len(receiver.received[0].headers["webhook-signature"].split(" ")) == 2
    assert receiver.verified(old) and receiver.verified(new)

    db.clock.advance(hours=24, seconds=1)
    receiver.received.clear()
    earn(db, shop, "b")
    dispatcher(db).run()
    [payload] = receiver.verified(new)
    assert payload["type"] == "transaction.earned"
    with pytest.raises(WebhookVerificationError):
        receiver.verified(old)


def test_a_ping_reaches_the_endpoint(db: Db, receiver: Receiver) -> None:
    shop = db.partner("EUR")
    endpoint_id, secret = register(db, shop, receiver.url)
    with transaction(db.sessions) as s:
        Webhooks(db.settings.secret_key, allow_private=True).ping(
            s, shop.id, endpoint_id, now=db.clock()
        )
    dispatcher(db).run()
    [payload] = receiver.verified(secret)
    assert payload["type"] == "ping"
    assert msgspec.json.decode(receiver.received[0].body)["data"] == {"endpoint_id": endpoint_id}


def test_a_dispatcher_that_died_mid_batch_leaves_the_deliveries_due_again(
    db: Db, receiver: Receiver
) -> None:
    shop = db.partner("EUR")
    register(db, shop, receiver.url)
    earn(db, shop)
    d = dispatcher(db)
    with db.sessions() as dying:
        assert len(d.claim(dying)) == 1  # claimed, then the process died before sending
    if db.backend == "postgres":
        # its row locks went with its connection: due again at once, no lease to wait out
        assert d.run() == 1
    else:
        assert d.run() == 0  # leased: no other dispatcher sends it meanwhile
        db.clock.advance(minutes=3)
        assert d.run() == 1
    assert [x.status for x in deliveries(db)] == ["delivered"]
    assert len(receiver.received) == 1


def test_every_attempt_is_recorded(db: Db, receiver: Receiver) -> None:
    shop = db.partner("EUR")
    endpoint_id, _ = register(db, shop, receiver.url)
    earn(db, shop)
    receiver.statuses = [500]
    d = dispatcher(db)
    d.run()
    db.clock.advance(seconds=6)
    d.run()
    with db.sessions() as s:
        [(delivery, kind, attempts)] = Webhooks(
            db.settings.secret_key, allow_private=True
        ).deliveries(s, shop.id, endpoint_id, after=None, limit=10)
    assert (kind, delivery.status, delivery.attempts) == ("transaction.earned", "delivered", 2)
    assert [(a.attempt, a.status_code, a.response_excerpt) for a in attempts] == [
        (1, 500, "ok"),
        (2, 200, "ok"),
    ]
    assert all(a.latency_ms >= 0 and a.error is None for a in attempts)


def test_an_endpoint_failing_for_five_days_is_disabled_and_nothing_is_lost(
    db: Db, receiver: Receiver
) -> None:
    shop = db.partner("EUR")
    endpoint_id, _ = register(db, shop, receiver.url)
    hooks = Webhooks(db.settings.secret_key, allow_private=True)
    d = dispatcher(db)
    receiver.statuses = [500] * 1000
    first_failure = db.clock()
    for day in range(12):  # 12 x 11 h: a new event and a failing round each time
        earn(db, shop, f"e{day}")
        d.run()
        with db.sessions() as s:
            endpoint = hooks.get(s, shop.id, endpoint_id)
        if db.clock() - first_failure < timedelta(days=5):
            assert not endpoint.disabled and endpoint.failing_since == first_failure
        db.clock.advance(hours=11)
    assert endpoint.disabled
    assert endpoint.disabled_reason is not None and "for 5 days" in endpoint.disabled_reason
    pending = [x for x in deliveries(db) if x.status == "pending"]
    assert pending, "what was due when it was disabled waits"

    receiver.statuses = []
    with transaction(db.sessions) as s:
        enabled = hooks.update(s, shop.id, endpoint_id, changes={"disabled": False}, now=db.clock())
        assert (enabled.disabled, enabled.failing_since) == (False, None)
    d.run()
    assert all(x.status in ("delivered", "failed") for x in deliveries(db))
    assert {x.id for x in pending} <= {x.id for x in deliveries(db) if x.status == "delivered"}


def test_a_success_ends_the_failing_streak(db: Db, receiver: Receiver) -> None:
    shop = db.partner("EUR")
    endpoint_id, _ = register(db, shop, receiver.url)
    earn(db, shop)
    receiver.statuses = [503]
    d = dispatcher(db)
    d.run()
    with db.sessions() as s:
        assert s.get_one(WebhookEndpoint, endpoint_id).failing_since == db.clock()
    db.clock.advance(seconds=130)  # past its Retry-After
    d.run()
    with db.sessions() as s:
        assert s.get_one(WebhookEndpoint, endpoint_id).failing_since is None


def test_redirects_are_not_followed(db: Db, receiver: Receiver) -> None:
    shop = db.partner("EUR")
    register(db, shop, receiver.url)
    earn(db, shop)
    receiver.statuses = [302]
    dispatcher(db).run()
    [delivery] = deliveries(db)
    assert (delivery.status, delivery.last_status_code) == ("pending", 302)
    assert len(receiver.received) == 1
    assert timedelta(0) < (delivery.next_attempt_at or db.clock()) - db.clock()


@pytest.mark.postgres
def test_a_dispatcher_skips_what_another_one_holds(pg: Db, receiver: Receiver) -> None:
    shop = pg.partner("EUR")
    register(pg, shop, receiver.url)
    for i in range(4):
        earn(pg, shop, f"e{i}")
    held = pg.sessions()
    with held.begin():
        # another dispatcher mid-claim: it holds the row locks of the two oldest deliveries
        locked = list(
            held.scalars(
                select(WebhookDelivery.id).order_by(WebhookDelivery.id).limit(2).with_for_update()
            )
        )
        with pg.sessions() as other:  # does not wait for them
            claimed = [c.delivery_id for c in dispatcher(pg).claim(other)]
    held.close()
    assert len(locked) == 2 and len(claimed) == 2
    assert not set(locked) & set(claimed)


def test_done_deliveries_and_their_events_are_purged_after_the_retention(
    db: Db, receiver: Receiver
) -> None:
    shop = db.partner("EUR")
    register(db, shop, receiver.url)
    earn(db, shop, "delivered")
    dispatcher(db).run()
    receiver.statuses = [500]
    earn(db, shop, "pending")
    dispatcher(db).run()
    db.clock.advance(days=31)
    with transaction(db.sessions) as s:
        assert purge(s, db.clock()) == 2  # the delivered delivery, then its event
    [left] = deliveries(db)
    assert left.status == "pending"  # never purged: it is still being sent
    with db.sessions() as s:
        assert [e.id for e in s.scalars(select(WebhookEvent))] == [left.event_id]


def test_the_health_view_lists_failing_endpoints_first_with_their_counts(
    db: Db, receiver: Receiver
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    shop, other = db.partner("EUR", name="Shop"), db.partner("EUR", name="Other")
    healthy, _ = register(db, other, receiver.url)
    failing, _ = register(db, shop, f"http://127.0.0.1:{closed_port}/hooks")
    earn(db, other, "ok")
    db.ops.earn(shop.id, member_id=db.member(), reference="bad", amount="7", currency="EUR")
    dispatcher(db).run()
    with db.sessions() as s:
        endpoints, recent = health(s)
    assert [(h.endpoint.id, h.failed, h.pending) for h in endpoints] == [
        (failing, 0, 1),
        (healthy, 0, 0),
    ]
    assert endpoints[0].endpoint.failing_since == db.clock()
    assert sorted((a.status_code or 0, p) for a, _, p in recent) == sorted(
        [(200, other.id), (0, shop.id)]
    )
