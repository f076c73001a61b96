"""The event catalogue: every event type a partner can hear of, declared once (the contract's
list, docs/webhooks.md), which ledger transfer and hold each describes, and an event's body.

Whoever announces an event (the ledger's write path through the outbox, rate cards,
statements, disputes, bank details) names it by :class:`EventType`; the endpoints' subscription
rule and the API's ``events`` field are :data:`SUBSCRIBABLE`, derived from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec
from msgspec import UNSET, Struct, UnsetType

from coalition.models import HoldStatus, TransactionKind


class EventType(StrEnum):
    """The contract's event catalogue (docs/webhooks.md)."""

    TRANSACTION_EARNED = "transaction.earned"
    TRANSACTION_BURNED = "transaction.burned"
    TRANSACTION_REVERSED = "transaction.reversed"
    HOLD_CAPTURED = "hold.captured"
    HOLD_VOIDED = "hold.voided"
    HOLD_EXPIRED = "hold.expired"
    STATEMENT_ISSUED = "statement.issued"
    STATEMENT_SETTLED = "statement.settled"
    DISPUTE_RESOLVED = "dispute.resolved"
    RATE_CARD_ACTIVATED = "rate_card.activated"
    PARTNER_BANK_ACCOUNT_CHANGED = "partner.bank_account_changed"
    PING = "ping"


#: Event types an endpoint may subscribe to, in the catalogue's order (``ping`` always reaches
#: it: it is how a partner tests one endpoint).
SUBSCRIBABLE = tuple(t.value for t in EventType if t is not EventType.PING)

#: The event of each way a hold leaves ``active``.
HOLD_EVENTS = {
    HoldStatus.CAPTURED: EventType.HOLD_CAPTURED,
    HoldStatus.VOIDED: EventType.HOLD_VOIDED,
    HoldStatus.EXPIRED: EventType.HOLD_EXPIRED,
}

#: The event of each kind of ledger transaction that a partner is told about.
TRANSACTION_EVENTS = {
    TransactionKind.EARN: EventType.TRANSACTION_EARNED,
    TransactionKind.BURN: EventType.TRANSACTION_BURNED,
    TransactionKind.EARN_REVERSAL: EventType.TRANSACTION_REVERSED,
    TransactionKind.BURN_REVERSAL: EventType.TRANSACTION_REVERSED,
}


#: An event's data: the struct of what it describes (a plain mapping for ``ping``).
EventData = Struct | Mapping[str, Any]


class HoldClosed(Struct):
    """The data of ``hold.captured``, ``hold.voided`` and ``hold.expired``; the captured points
    and the capture's burn only on ``hold.captured``."""

    id: str
    partner_id: str
    member_id: str
    reference: str
    points: int
    status: str
    expires_at: datetime
    closed_at: datetime
    captured_points: int | UnsetType | None = UNSET
    transaction_id: str | UnsetType | None = UNSET


def body_of(event_id: str, event_type: str, created_at: datetime, data: EventData) -> str:
    """The JSON body of an event, as the contract shapes it."""
    document = {"id": event_id, "type": event_type, "created_at": created_at, "data": data}
    return msgspec.json.encode(document).decode()
