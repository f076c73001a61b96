"""Migration 0020_transaction_events_rendered on a database holding webhook events, on both
backends: down, an event stored without its body gets the bytes the dispatcher sends for it
(byte for byte) and the column is required again; up again, the bodies stay and are sent as
they were, and an event with neither body nor transaction is refused."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from coalition.db import _alembic_config, transaction
from coalition.models import Transaction
from partners.webhooks.outbox import sent_body
from partners.webhooks.tables import WebhookEvent
from tests.conftest import Db
from tests.partners.test_webhook_outbox import endpoint

BEFORE = "0019_webhook_rows_unkeyed"


def _sent(db: Db) -> dict[str, bytes]:
    with db.sessions() as s:
        rows = s.execute(
            select(WebhookEvent, Transaction).outerjoin(
                Transaction, Transaction.id == WebhookEvent.transaction_id
            )
        ).all()
        return {event.id: sent_body(event, txn) for event, txn in rows}


def test_events_without_a_body_go_down_to_the_bytes_sent_and_come_back(db: Db) -> None:
    shop = db.partner("EUR", earn="1")
    endpoint(db, shop)
    member = db.member()
    for reference in ("e1", "e2"):
        db.ops.earn(shop.id, member_id=member, reference=reference, amount="12.50", currency="EUR")
    sent = _sent(db)
    with db.engine.connect() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM webhook_events WHERE payload IS NULL")).scalar()
            == 2
        )
    config = _alembic_config(db.engine)

    command.downgrade(config, BEFORE)
    with db.engine.connect() as conn:
        stored: dict[str, str] = dict(
            conn.execute(text("SELECT id, payload FROM webhook_events")).all()
        )
    assert {key: value.encode() for key, value in stored.items()} == sent

    command.upgrade(config, "head")
    assert _sent(db) == sent
    with pytest.raises(IntegrityError), transaction(db.sessions) as s:
        s.add(
            WebhookEvent(
                id="evt_empty", type="ping", partner_id=shop.id, payload=None,
                created_at=db.clock(),
            )
        )  # fmt: skip
    db.assert_ledger_ok()
