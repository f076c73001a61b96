"""The outbox: an event and a delivery per subscribed endpoint are written in the database
transaction of what they describe, and only for the partner concerned."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta
from typing import Any

import msgspec
import pytest
from sqlalchemy import event as sql_events
from sqlalchemy import select

from coalition import idempotency as store
from coalition.db import transaction
from coalition.models import Transaction
from partners.models import Partner
from partners.operations import EarnItem
from partners.webhooks import outbox
from partners.webhooks.endpoints import Webhooks
from partners.webhooks.events import EventType
from partners.webhooks.outbox import sent_body
from partners.webhooks.tables import WebhookAttempt, WebhookDelivery, WebhookEvent
from settlement import workflow
from settlement.workflow import Actor
from tests.conftest import Db
from tests.settlement.helpers import close_at


def webhooks(db: Db) -> Webhooks:
    return Webhooks(db.settings.secret_key, allow_private=True, resolver=lambda h, p: ["127.0.0.1"])


def endpoint(db: Db, partner: Partner, events: list[str] | None = None) -> str:
    with transaction(db.sessions) as s:
        created = webhooks(db).create(
            s, partner.id, url="http://127.0.0.1:9/hook", events=events, description=None,
            now=db.clock(),
        )  # fmt: skip
        return created.endpoint.id


def events(db: Db) -> list[tuple[str, str, dict[str, object]]]:
    with db.sessions() as s:
        rows = s.execute(
            select(WebhookEvent, Transaction)
            .outerjoin(Transaction, Transaction.id == WebhookEvent.transaction_id)
            .order_by(WebhookEvent.id)
        ).all()
        return [(e.type, e.partner_id, msgspec.json.decode(sent_body(e, t))) for e, t in rows]


def deliveries(db: Db) -> list[tuple[str, str, str]]:
    with db.sessions() as s:
        rows = s.execute(select(WebhookDelivery).order_by(WebhookDelivery.id)).scalars().all()
        return [(d.event_id, d.endpoint_id, d.status) for d in rows]


def test_an_earn_writes_its_event_and_a_pending_delivery_per_endpoint(db: Db) -> None:
    shop = db.partner("EUR")
    first, second = endpoint(db, shop), endpoint(db, shop)
    member = db.member()
    earn = db.ops.earn(shop.id, member_id=member, reference="e1", amount="12.50", currency="EUR")

    [(kind, partner_id, body)] = events(db)
    assert (kind, partner_id) == ("transaction.earned", shop.id)
    assert set(body) == {"id", "type", "created_at", "data"}
    assert body["type"] == "transaction.earned"
    data = body["data"]
    assert isinstance(data, dict)
    assert data["id"] == earn.transaction.id
    assert (data["amount"], data["currency"], data["points"]) == ("12.50", "EUR", 12)
    assert "reverses" not in data
    assert sorted((e, s) for _, e, s in deliveries(db)) == sorted(
        [(first, "pending"), (second, "pending")]
    )
    assert {d[0] for d in deliveries(db)} == {body["id"]}


def test_burns_and_reversals_have_their_events(db: Db) -> None:
    shop = db.partner("EUR")
    member = db.member(100, shop)
    endpoint(db, shop)
    burn = db.ops.burn(shop.id, member_id=member, reference="b", points=10)
    db.ops.reverse(shop.id, burn.transaction.id, reference="r")
    assert sorted(e[0] for e in events(db)) == ["transaction.burned", "transaction.reversed"]
    reversal = _data(db, "transaction.reversed")
    assert isinstance(reversal, dict) and reversal["reverses"] == burn.transaction.id


def test_a_partner_without_endpoints_gets_no_event(db: Db) -> None:
    shop = db.partner("EUR")
    db.ops.earn(shop.id, member_id=db.member(), reference="e", amount="5", currency="EUR")
    assert events(db) == []


def test_another_partner_never_receives_the_event(db: Db) -> None:
    shop, other = db.partner("EUR", name="Shop"), db.partner("EUR", name="Other")
    endpoint(db, other)
    db.ops.earn(shop.id, member_id=db.member(), reference="e", amount="5", currency="EUR")
    assert events(db) == []
    assert deliveries(db) == []


def test_an_earn_that_rolled_back_writes_nothing(db: Db) -> None:
    shop = db.partner("EUR")
    endpoint(db, shop)
    member = db.member()

    def failing_request() -> None:
        with transaction(db.sessions) as s:
            db.ops.earn(
                shop.id, member_id=member, reference="e", amount="5", currency="EUR", session=s
            )
            raise RuntimeError("the request failed after the earn")

    with pytest.raises(RuntimeError):
        failing_request()
    assert events(db) == []
    assert deliveries(db) == []


def test_the_events_filter_and_disabled_endpoints_are_honoured(db: Db) -> None:
    shop = db.partner("EUR")
    burns_only = endpoint(db, shop, events=["transaction.burned"])
    disabled = endpoint(db, shop)
    with transaction(db.sessions) as s:
        webhooks(db).update(s, shop.id, disabled, changes={"disabled": True}, now=db.clock())
    db.ops.earn(shop.id, member_id=db.member(), reference="e", amount="5", currency="EUR")
    assert events(db) == []
    assert burns_only


def test_a_bulk_earn_writes_one_event_per_transaction(db: Db) -> None:
    shop = db.partner("EUR")
    hook = endpoint(db, shop)
    items = [EarnItem(db.member(), f"r{i}", "3", "EUR", None) for i in range(5)]
    posted = db.ops.earn_many(shop.id, items)
    ids = {p.transaction.id for p in posted if not isinstance(p, Exception)}
    written = events(db)
    assert len(ids) == 5
    assert {e[2]["data"]["id"] for e in written} == ids  # type: ignore[index]
    assert [d[1] for d in deliveries(db)] == [hook] * 5


def test_invariant_6_holds_and_catches_a_misdirected_delivery(db: Db) -> None:
    shop, other = db.partner("EUR", name="Shop"), db.partner("EUR", name="Other")
    endpoint(db, shop)
    foreign = endpoint(db, other)
    db.ops.earn(shop.id, member_id=db.member(), reference="e", amount="5", currency="EUR")
    db.assert_ledger_ok()
    with transaction(db.sessions) as s:
        event = s.scalars(select(WebhookEvent)).one()
        assert event.transaction_id is not None
        s.add(
            WebhookDelivery(
                event_id=event.id,
                endpoint_id=foreign,
                status="pending",
                attempts=0,
                next_attempt_at=db.clock(),
                created_at=db.clock(),
            )
        )
    assert list(db.violations()) == [6]


def test_invariant_6_catches_a_delivery_or_an_event_that_names_nothing(db: Db) -> None:
    """The references migration 0019 left without a foreign key are checked instead."""
    shop = db.partner("EUR")
    hook = endpoint(db, shop)
    db.ops.earn(shop.id, member_id=db.member(), reference="e", amount="5", currency="EUR")
    with transaction(db.sessions) as s:
        event = s.scalars(select(WebhookEvent)).one()
        s.add(
            WebhookDelivery(
                event_id="evt_gone", endpoint_id=hook, status="delivered", attempts=1,
                created_at=db.clock(),
            )
        )  # fmt: skip
        s.add(
            WebhookEvent(
                id="evt_stray", type=event.type, partner_id="prt_gone", payload="{}",
                created_at=db.clock(),
            )
        )  # fmt: skip
    found = db.violations()[6]
    assert any("missing event or endpoint" in v for v in found)
    assert any("event of no partner" in v for v in found)


def test_deleting_an_endpoint_deletes_its_deliveries_and_their_attempts(db: Db) -> None:
    shop = db.partner("EUR")
    gone, kept = endpoint(db, shop), endpoint(db, shop)
    db.ops.earn(shop.id, member_id=db.member(), reference="e", amount="5", currency="EUR")
    with transaction(db.sessions) as s:
        for delivery in s.scalars(select(WebhookDelivery)):
            s.add(
                WebhookAttempt(
                    delivery_id=delivery.id, attempt=1, attempted_at=db.clock(), latency_ms=3
                )
            )
    with transaction(db.sessions) as s:
        webhooks(db).delete(s, shop.id, gone)
    assert [d[1] for d in deliveries(db)] == [kept]
    with db.sessions() as s:
        assert len(s.scalars(select(WebhookAttempt)).all()) == 1
    db.assert_ledger_ok()


def _data(db: Db, event_type: str) -> dict[str, object]:
    [data] = [body["data"] for kind, _, body in events(db) if kind == event_type]
    assert isinstance(data, dict)
    return data


def test_a_captured_hold_has_its_event_beside_its_burn(db: Db) -> None:
    shop = db.partner("EUR")
    member = db.member(100, shop)
    endpoint(db, shop)
    hold = db.ops.hold(shop.id, member_id=member, reference="h", points=40).hold
    burn = db.ops.capture(shop.id, hold.id, points=30)
    assert sorted(e[0] for e in events(db)) == ["hold.captured", "transaction.burned"]
    data = _data(db, "hold.captured")
    assert data["id"] == hold.id and data["status"] == "captured"
    assert (data["points"], data["captured_points"]) == (40, 30)
    assert data["transaction_id"] == burn.transaction.id
    assert (data["member_id"], data["reference"], data["partner_id"]) == (member, "h", shop.id)


def test_voided_and_expired_holds_have_their_events(db: Db) -> None:
    shop = db.partner("EUR")
    member = db.member(100, shop)
    endpoint(db, shop, events=["hold.voided", "hold.expired"])
    voided = db.ops.hold(shop.id, member_id=member, reference="v", points=10).hold
    db.ops.void(shop.id, voided.id)
    lapsed = db.ops.hold(shop.id, member_id=member, reference="x", points=10, expires_in=60).hold
    db.clock.advance(seconds=61)
    assert db.ops.expire_holds() == 1
    assert sorted((e[0], e[2]["data"]["id"]) for e in events(db)) == [  # type: ignore[index]
        ("hold.expired", lapsed.id),
        ("hold.voided", voided.id),
    ]
    assert "captured_points" not in _data(db, "hold.voided")


def test_a_rate_card_is_announced_when_it_takes_effect(db: Db) -> None:
    shop = db.partner("EUR")
    hook = endpoint(db, shop, events=["rate_card.activated"])
    starts = db.clock() + timedelta(days=10)
    card = db.rate_card(shop.id, effective_from=starts)
    data = _data(db, "rate_card.activated")
    assert data["id"] == card.id
    assert datetime.fromisoformat(str(data["effective_from"])) == starts
    with db.sessions() as s:
        [delivery] = s.scalars(select(WebhookDelivery)).all()
    assert (delivery.endpoint_id, delivery.next_attempt_at) == (hook, starts)


def test_statements_and_disputes_have_their_events(db: Db) -> None:
    shop = db.partner("EUR")
    endpoint(db, shop, events=["statement.issued", "statement.settled", "dispute.resolved"])
    other = db.partner("EUR", name="Other")
    member = db.member()
    db.ops.earn(shop.id, member_id=member, reference="e", amount="12.50", currency="EUR")
    db.clock.advance(hours=1)
    closed = close_at(db, db.clock())
    [statement] = [s for s in closed.statements if s.partner_id == shop.id]
    issued = _data(db, "statement.issued")
    assert (issued["id"], issued["status"], issued["lines"]) == (statement.id, "issued", 1)
    assert issued["content_sha256"] == statement.content_sha256
    assert {p for _, p, _ in events(db)} == {shop.id}, "the other partner has no endpoint"
    assert other

    key = db.settings.secret_key
    partner = Actor("key_p", "partner", shop.id)
    operator = Actor("key_o", "operator")
    with transaction(db.sessions) as s:
        dispute = workflow.open_dispute(
            s, statement.id, partner, reason="why", transaction_ids=[], secret_key=key,
            now=db.clock(),
        )  # fmt: skip
    with transaction(db.sessions) as s:
        workflow.resolve(
            s, dispute.id, operator, outcome="upheld", note="ok", adjustment="-1.25",
            secret_key=key, now=db.clock(),
        )  # fmt: skip
    resolved = _data(db, "dispute.resolved")
    assert (resolved["id"], resolved["outcome"], resolved["adjustment"]) == (
        dispute.id, "upheld", "-1.25"
    )  # fmt: skip
    with transaction(db.sessions) as s:
        workflow.settle(
            s, statement.id, operator, payment_reference="wire 1", paid_at=db.clock(),
            secret_key=key, now=db.clock(),
        )  # fmt: skip
    settled = _data(db, "statement.settled")
    assert (settled["status"], settled["payment_reference"]) == ("settled", "wire 1")


_TRANSACTION_FIELDS = [
    "id", "kind", "partner_id", "member_id", "reference", "points", "amount", "currency",
    "rate_card_id", "occurred_at", "posted_at", "balance_after",
]  # fmt: skip
_HOLD_FIELDS = [
    "id", "partner_id", "member_id", "reference", "points", "status", "expires_at", "closed_at",
]  # fmt: skip


def test_event_data_keeps_the_contracts_fields_in_order(db: Db) -> None:
    """The data of signed, stored events is written field for field as before the domain
    returned structs: the same names in the same order, optional fields only where they
    belong (``reverses`` on reversals, the capture's fields on ``hold.captured``)."""
    shop = db.partner("EUR")
    endpoint(db, shop)
    member = db.member()
    earn = db.ops.earn(shop.id, member_id=member, reference="e", amount="12.50", currency="EUR")
    db.ops.reverse(shop.id, earn.transaction.id, reference="r", points=2)
    voided = db.ops.hold(shop.id, member_id=member, reference="v", points=3).hold
    db.ops.void(shop.id, voided.id)
    held = db.ops.hold(shop.id, member_id=member, reference="h", points=4).hold
    db.ops.capture(shop.id, held.id, points=4)
    assert list(_data(db, "transaction.earned")) == _TRANSACTION_FIELDS
    assert list(_data(db, "transaction.reversed")) == [*_TRANSACTION_FIELDS, "reverses"]
    assert list(_data(db, "hold.voided")) == _HOLD_FIELDS
    assert list(_data(db, "hold.captured")) == [*_HOLD_FIELDS, "captured_points", "transaction_id"]
    earned = _data(db, "transaction.earned")
    assert (earned["amount"], earned["rate_card_id"]) == ("12.50", earn.transaction.rate_card_id)
    assert str(earned["posted_at"]).endswith("Z")


_LISTENING = """
import importlib, sys
importlib.import_module(sys.argv[1])
from coalition.ledger import listeners
print(any(type(l).__module__ == "partners.webhooks.outbox" for l in listeners._LISTENERS))
"""


def listening_after_import(module: str) -> bool:
    """Whether a fresh process that imported ``module`` has the outbox hearing the ledger."""
    run = subprocess.run(
        [sys.executable, "-c", _LISTENING, module], capture_output=True, text=True, check=True
    )
    return run.stdout.strip() == "True"


@pytest.mark.parametrize(
    "entry",
    # whatever posts a transfer: the operations (the API, the jobs), the import, the app, the demo
    ["partners.models", "partners.operations", "partners.imports", "api.app", "cli.demo"],
)
def test_every_process_that_can_post_a_transfer_has_the_outbox_listening(entry: str) -> None:
    assert listening_after_import(entry)


def test_the_ledger_alone_does_not_import_the_outbox() -> None:
    assert not listening_after_import("coalition.ledger")


def test_a_signed_requests_one_event_rides_the_statement_that_stores_its_response(pg: Db) -> None:
    """On PostgreSQL the event and its delivery go out in the idempotency record's own
    ``INSERT`` (the outbox's rider): the outbox adds no statement to a signed request."""
    shop = pg.partner("EUR")
    endpoint(pg, shop)
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(str(args[2]))

    now = pg.clock()
    sql_events.listen(pg.engine, "before_cursor_execute", count)
    try:
        with transaction(pg.sessions) as s:
            outbox.note(s, EventType.RATE_CARD_ACTIVATED, shop.id, {"id": "rc"}, at=now)
            store.save(
                s, owner=shop.id, key="k1", request_hash=b"h", method="POST", path="/v1/x",
                status=201, body=b"{}", now=now, rider=outbox.RIDER,
            )  # fmt: skip
    finally:
        sql_events.remove(pg.engine, "before_cursor_execute", count)
    [written] = [sql for sql in seen if "webhook_events" in sql]
    assert "INSERT INTO idempotency_keys" in written
    [(kind, partner_id, _)] = events(pg)
    assert (kind, partner_id) == ("rate_card.activated", shop.id)
    assert [status for _, _, status in deliveries(pg)] == ["pending"]
