"""A ledger transaction's webhook event is stored without its body (``payload`` NULL): the
body is the transaction rendered from its row when the event is sent
(``partners.webhooks.outbox.sent_body``; docs/architecture.md, decision 28), as a stored
response that is a transaction is (0018). The row never changes and the rendering is a
function of it alone, so every attempt sends the same bytes; an earn no longer renders and
encodes an event body nobody may be subscribed to, and a subscribed one writes about 600 bytes
less. A check keeps every event with a body or a transaction to render (``has_body``).
Events stored before keep their payloads.

The downgrade writes the body of every event stored without one (the rendering of a
transaction at this revision: :mod:`coalition.migrations.renderings`), refuses if one is left
without, and makes the column required again.

Revision ID: 0020_transaction_events_rendered
Revises: 0019_webhook_rows_unkeyed
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from coalition.db import UTCDateTime
from coalition.migrations.renderings import TRANSACTIONS, event_body, transaction_body

revision = "0020_transaction_events_rendered"
down_revision = "0019_webhook_rows_unkeyed"
branch_labels = None
depends_on = None

_CHECK = "ck_webhook_events_has_body"

_EVENTS = sa.table(
    "webhook_events",
    sa.column("id", sa.String()),
    sa.column("type", sa.String()),
    sa.column("payload", sa.Text()),
    sa.column("created_at", UTCDateTime()),
    sa.column("transaction_id", sa.String()),
)


def upgrade() -> None:
    with op.batch_alter_table("webhook_events") as batch:
        batch.alter_column("payload", existing_type=sa.Text(), nullable=True)
        batch.create_check_constraint(
            op.f(_CHECK), sa.text("payload IS NOT NULL OR transaction_id IS NOT NULL")
        )


def downgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(
            _EVENTS.c.id.label("event_id"),
            _EVENTS.c.type.label("event_type"),
            _EVENTS.c.created_at.label("event_at"),
            *TRANSACTIONS.c,
        )
        .join(TRANSACTIONS, TRANSACTIONS.c.id == _EVENTS.c.transaction_id)
        .where(_EVENTS.c.payload.is_(None))
    ).all()
    if rows:
        conn.execute(
            sa.update(_EVENTS)
            .where(_EVENTS.c.id == sa.bindparam("e"))
            .values(payload=sa.bindparam("p")),
            [
                {
                    "e": r.event_id,
                    "p": event_body(r.event_id, r.event_type, r.event_at, transaction_body(r)),
                }
                for r in rows
            ],
        )
    left = "SELECT count(*) FROM webhook_events WHERE payload IS NULL"
    if int(conn.execute(sa.text(left)).scalar_one() or 0):
        raise RuntimeError(
            "0020 downgrade: an event without a body names a transaction that is gone"
        )
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_constraint(op.f(_CHECK), type_="check")
        batch.alter_column("payload", existing_type=sa.Text(), nullable=False)
