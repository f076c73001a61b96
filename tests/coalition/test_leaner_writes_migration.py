"""Migration 0018_leaner_signed_writes on a database holding stored responses, on both backends:
down, a response kept as its transaction gets the body the API sent (byte for byte) and every
row its hex hash and lease columns; up again, the hashes are their 32 bytes and every response
replays what it did; the partner-by-time index goes up and comes back down."""

from __future__ import annotations

import hashlib

import msgspec
from alembic import command
from sqlalchemy import inspect, text

from coalition import idempotency as store
from coalition.db import _alembic_config, transaction
from partners.queries import transaction_out
from tests.conftest import Db

BEFORE = "0017_request_rows_unkeyed"
_INDEX = "ix_transactions_partner_posted"


def _indexes(db: Db) -> set[str]:
    return {index["name"] or "" for index in inspect(db.engine).get_indexes("transactions")}


def test_stored_responses_go_down_to_bodies_and_come_back(db: Db) -> None:
    shop = db.partner("EUR", earn="1")
    member = db.member()
    posted = db.ops.earn(shop.id, member_id=member, reference="e1", amount="12.50", currency="EUR")
    sent = msgspec.json.encode(transaction_out(posted.transaction))  # what the API answered
    now = db.clock()
    hashes = {key: hashlib.sha256(key.encode()).digest() for key in ("txn", "body")}
    with transaction(db.sessions) as s:
        for key, body, txn_id in (("txn", None, posted.transaction.id), ("body", b'{"a":1}', None)):
            store.save(
                s, owner=shop.id, key=key, request_hash=hashes[key], method="POST",
                path="/v1/earns", status=201, body=body, now=now, transaction_id=txn_id,
            )  # fmt: skip
    assert _INDEX not in _indexes(db)
    config = _alembic_config(db.engine)

    command.downgrade(config, BEFORE)
    with db.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT key, request_hash, state, response_body FROM idempotency_keys ORDER BY key"
            )
        ).all()
    assert [(key, bytes(body)) for key, _, _, body in rows] == [("body", b'{"a":1}'), ("txn", sent)]
    assert [(h, state) for _, h, state, _ in rows] == [
        (hashes["body"].hex(), "done"),
        (hashes["txn"].hex(), "done"),
    ]
    assert _INDEX in _indexes(db)

    command.upgrade(config, "head")
    with transaction(db.sessions) as s:
        for key, body in (("txn", sent), ("body", b'{"a":1}')):
            stored = store.lookup(
                s, owner=shop.id, key=key, request_hash=hashes[key], now=db.clock()
            )
            assert stored == store.StoredResponse(201, body)
    assert _INDEX not in _indexes(db)
    db.assert_ledger_ok()
