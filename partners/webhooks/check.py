"""Invariant 6 (docs/invariants.md): every event of a ledger transaction matches it (its
partner, its kind's type), every event names a partner, and every delivery names an event and
goes to an endpoint of that event's partner.
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
    # The references no foreign key guards (migration 0019): an event's partner, a
    # delivery's event and endpoint.
    unowned = sample_rows(
        session,
        "SELECT e.id AS event_id, e.partner_id FROM webhook_events e"
        " LEFT JOIN partners p ON p.id = e.partner_id WHERE p.id IS NULL",
    )
    dangling = sample_rows(
        session,
        "SELECT d.id AS delivery_id, d.event_id, d.endpoint_id FROM webhook_deliveries d"
        " LEFT JOIN webhook_events e ON e.id = d.event_id"
        " LEFT JOIN webhook_endpoints w ON w.id = d.endpoint_id"
        " WHERE e.id IS NULL OR w.id IS NULL",
    )
    return (
        [f"event does not match its transaction: {r}" for r in mismatched]
        + [f"delivery to another partner's endpoint: {r}" for r in misdirected]
        + [f"event of no partner: {r}" for r in unowned]
        + [f"delivery of a missing event or endpoint: {r}" for r in dangling]
    )


#: The webhooks' check, in the shape ``coalition.check.run_checks`` takes.
CHECKS: list[tuple[int, str, Callable[[Session], list[str]]]] = [
    (
        6,
        "every event matches its committed transaction and goes to its own partner's endpoints",
        _events,
    ),
]
