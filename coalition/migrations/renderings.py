"""A ledger transaction in the contract's shape as the revisions that need it render it: the
downgrades that give back a body to what was stored as a transaction's id (0018: a stored
response; 0020: a webhook event). Written against the table as those revisions read it, not
the models, which may change later.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa

from coalition.db import UTCDateTime
from coalition.money import format_amount

#: The ``transactions`` columns the rendering reads.
TRANSACTIONS = sa.table(
    "transactions",
    *(sa.column(name, sa.String()) for name in ("id", "kind", "partner_id", "member_id")),
    *(sa.column(name, sa.String()) for name in ("reference", "currency", "rate_card_id")),
    *(sa.column(name, sa.BigInteger()) for name in ("points", "amount_minor", "balance_after")),
    sa.column("occurred_at", UTCDateTime()),
    sa.column("posted_at", UTCDateTime()),
    sa.column("reverses", sa.String()),
)


def transaction_body(t: Any) -> bytes:
    """A transaction (a row with :data:`TRANSACTIONS`' columns) in the contract's shape, as
    the API renders it (``partners.queries.TransactionOut``)."""
    amount = None
    if t.amount_minor is not None and t.currency is not None:
        amount = format_amount(t.amount_minor, t.currency)
    data: dict[str, Any] = {
        "id": t.id,
        "kind": t.kind,
        "partner_id": t.partner_id,
        "member_id": t.member_id,
        "reference": t.reference,
        "points": t.points,
        "amount": amount,
        "currency": t.currency,
        "rate_card_id": t.rate_card_id,
        "occurred_at": t.occurred_at,
        "posted_at": t.posted_at,
        "balance_after": t.balance_after,
    }
    if t.reverses is not None:
        data["reverses"] = t.reverses
    return msgspec.json.encode(data)


def event_body(event_id: str, event_type: str, created_at: datetime, data: bytes) -> str:
    """A webhook event's body around its ``data`` (JSON), as ``partners.webhooks.events
    .body_of`` shapes it."""
    document = {
        "id": event_id,
        "type": event_type,
        "created_at": created_at,
        "data": msgspec.Raw(data),
    }
    return msgspec.json.encode(document).decode()
