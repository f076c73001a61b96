"""Migration 0019_webhook_rows_unkeyed on a database with events and deliveries, on both
backends: down, the three foreign keys are back (the endpoint's with its cascade); up again,
they are gone and every invariant holds."""

from __future__ import annotations

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from coalition.db import _alembic_config, transaction
from tests.conftest import Db
from tests.partners.test_webhook_outbox import deliveries, endpoint

REVISION = "0019_webhook_rows_unkeyed"
#: (table, column) -> the parent table a foreign key names, before the revision.
KEYED = {
    ("webhook_events", "partner_id"): "partners",
    ("webhook_deliveries", "event_id"): "webhook_events",
    ("webhook_deliveries", "endpoint_id"): "webhook_endpoints",
}


def _keys(db: Db) -> dict[tuple[str, str], tuple[str, str | None]]:
    inspector = inspect(db.engine)
    return {
        (table, fk["constrained_columns"][0]): (fk["referred_table"], fk["options"].get("ondelete"))
        for table in ("webhook_events", "webhook_deliveries")
        for fk in inspector.get_foreign_keys(table)
    }


def test_the_webhook_keys_go_and_come_back(db: Db) -> None:
    shop = db.partner("EUR")
    hook = endpoint(db, shop)
    db.ops.earn(shop.id, member_id=db.member(), reference="e", amount="5", currency="EUR")
    config = _alembic_config(db.engine)
    before = ScriptDirectory.from_config(config).get_revision(REVISION).down_revision
    assert isinstance(before, str)
    assert not set(_keys(db)) & set(KEYED)

    command.downgrade(config, before)
    keys = _keys(db)
    assert {k: keys[k][0] for k in KEYED} == KEYED
    assert (keys[("webhook_deliveries", "endpoint_id")][1] or "").upper() == "CASCADE"
    with transaction(db.sessions) as s:  # the cascade of the key that is back
        s.execute(text("DELETE FROM webhook_endpoints WHERE id = :id"), {"id": hook})
    assert deliveries(db) == []

    command.upgrade(config, "head")
    assert not set(_keys(db)) & set(KEYED)
    db.assert_ledger_ok()
