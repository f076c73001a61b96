"""Invariant 6 (docs/invariants.md): every event of a ledger transaction matches it (its
partner, its kind's type), and every delivery goes to an endpoint of its event's partner.
``coalition check`` runs it with the others (``settlement.check.run_checks``)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from coalition.check import sample_rows
from partners.webhooks.events import TRANSACTION_EVENTS

#: The event type of each ledger transaction kind that has one, as SQL.
_EVENT_OF_KIND = (
    "CASE t.kind "
    + " ".join(
        f"WHEN '{kind.value}' THEN '{event.value}'" for kind, event in TRANSACTION_EVENTS.items()
    )
    + " END"
)


def _events(session: Session) -> list[str]:
    mismatched = sample_rows(
        session,
        "SELECT e.id AS event_id, e.type, t.id AS transaction_id, t.kind"  # noqa: S608 (built from constants)
        " FROM webhook_events e JOIN transactions t ON t.id = e.transaction_id"
        " WHERE e.partner_id <> t.partner_id OR t.partner_id IS NULL"
        f" OR e.type <> {_EVENT_OF_KIND} OR {_EVENT_OF_KIND} IS NULL",
    )
    misdirected = sample_rows(
        session,
        "SELECT d.id AS delivery_id, e.partner_id AS event_partner,"
        " w.partner_id AS endpoint_partner FROM webhook_deliveries d"
        " JOIN webhook_events e ON e.id = d.event_id"
        " JOIN webhook_endpoints w ON w.id = d.endpoint_id WHERE w.partner_id <> e.partner_id",
    )
    return [f"event does not match its transaction: {r}" for r in mismatched] + [
        f"delivery to another partner's endpoint: {r}" for r in misdirected
    ]


#: The webhooks' check, in the shape ``coalition.check.run_checks`` takes.
CHECKS: list[tuple[int, str, Callable[[Session], list[str]]]] = [
    (
        6,
        "every event matches its committed transaction and goes to its own partner's endpoints",
        _events,
    ),
]
