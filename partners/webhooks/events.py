"""The event catalogue: every event type a partner can hear of, declared once (the contract's
list, docs/webhooks.md), which ledger transfer and hold each describes, and an event's body.

Whoever announces an event (the ledger's write path through the outbox, rate cards,
statements, disputes, bank details) names it by :class:`EventType`; the endpoints' subscription
rule and the API's ``events`` field are :data:`SUBSCRIBABLE`, derived from it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec

from coalition.models import HoldStatus, Transaction, TransactionKind
from coalition.money import format_amount


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


def body_of(event_id: str, event_type: str, created_at: datetime, data: Any) -> str:
    """The JSON body of an event, as the contract shapes it."""
    document = {"id": event_id, "type": event_type, "created_at": created_at, "data": data}
    return msgspec.json.encode(document).decode()


def transaction_data(txn: Transaction) -> dict[str, Any]:
    """A transaction in the contract's shape (the API's ``TransactionOut``)."""
    amount = None
    if txn.amount_minor is not None and txn.currency is not None:
        amount = format_amount(txn.amount_minor, txn.currency)
    data: dict[str, Any] = {
        "id": txn.id,
        "kind": txn.kind,
        "partner_id": txn.partner_id,
        "member_id": txn.member_id,
        "reference": txn.reference,
        "points": txn.points,
        "amount": amount,
        "currency": txn.currency,
        "rate_card_id": txn.rate_card_id,
        "occurred_at": txn.occurred_at,
        "posted_at": txn.posted_at,
        "balance_after": txn.balance_after,
    }
    if txn.reverses is not None:  # as in the API: only on reversals
        data["reverses"] = txn.reverses
    return data
