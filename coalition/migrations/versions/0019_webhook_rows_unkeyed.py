"""The rows an earn writes for a subscribed partner lose their foreign keys to hot parents:
an event's key to its partner (``webhook_events.partner_id``) and a delivery's keys to its
event and its endpoint (``webhook_deliveries``).

With an endpoint subscribed, every earn inserts one event and one delivery per endpoint, and
each key's check took a ``FOR KEY SHARE`` lock on its parent row: the partner's one row and
the endpoint's one row, shared by every earn of that partner (a MultiXact on each under
concurrency), and the event just inserted. Three ``Heap/LOCK`` records, 162 of the 1,828
bytes of WAL an endpoint adds to a signed earn (docs/benchmarks.md). Partners are never
deleted; an endpoint's deletion now deletes its deliveries itself
(:meth:`partners.webhooks.endpoints.Webhooks.delete`); ``coalition check`` verifies every
event names a partner and every delivery an event and an endpoint (invariant 6).

Revision ID: 0019_webhook_rows_unkeyed
Revises: 0018_leaner_signed_writes
"""

from __future__ import annotations

from coalition.migrations import foreign_keys

revision = "0019_webhook_rows_unkeyed"
down_revision = "0018_leaner_signed_writes"
branch_labels = None
depends_on = None

_KEYS: tuple[foreign_keys.Key, ...] = (
    ("webhook_events", "fk_webhook_events_partner_id_partners", "partner_id", "partners"),
    (
        "webhook_deliveries",
        "fk_webhook_deliveries_event_id_webhook_events",
        "event_id",
        "webhook_events",
    ),
    (
        "webhook_deliveries",
        "fk_webhook_deliveries_endpoint_id_webhook_endpoints",
        "endpoint_id",
        "webhook_endpoints",
    ),
)
_CASCADE = frozenset({"fk_webhook_deliveries_endpoint_id_webhook_endpoints"})


def upgrade() -> None:
    foreign_keys.drop(_KEYS, cascade=_CASCADE)


def downgrade() -> None:
    foreign_keys.add(_KEYS, cascade=_CASCADE)
