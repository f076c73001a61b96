"""``coalition check``: verify every ledger invariant of docs/invariants.md on a database.

Each check is one SQL aggregate over the whole ledger (a full audit, not a hot-path query) and
reports at most :data:`SAMPLE` offending ids, so a report stays readable at any size. The kernel
checks invariants 1 to 3 (the ledger's, in ``coalition.ledger.check``) and 6 (the outbox) here;
the liability (4) and the statements (5) are checked by ``settlement.check``, where those
numbers are computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from coalition import outbox
from coalition.ledger.check import LEDGER_CHECKS, SAMPLE, sample_rows

__all__ = ["CHECKS", "SAMPLE", "Finding", "run_checks", "sample_rows"]


@dataclass(slots=True)
class Finding:
    """One invariant, whether it holds, and what breaks it."""

    invariant: int
    name: str
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing breaks the invariant."""
        return not self.violations


#: The event type of each ledger transaction kind that has one, as SQL.
_EVENT_OF_KIND = (
    "CASE t.kind "
    + " ".join(
        f"WHEN '{kind.value}' THEN '{event.value}'"
        for kind, event in outbox.TRANSACTION_EVENTS.items()
    )
    + " END"
)


def _events(session: Session) -> list[str]:
    """Invariant 6: every event of a ledger transaction matches it (its partner, its kind's
    type), and every delivery goes to an endpoint of its event's partner."""
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


CHECKS: list[tuple[int, str, Callable[[Session], list[str]]]] = [
    *LEDGER_CHECKS,
    (
        6,
        "every event matches its committed transaction and goes to its own partner's endpoints",
        _events,
    ),
]


def run_checks(
    session: Session, checks: Sequence[tuple[int, str, Callable[[Session], list[str]]]] = ()
) -> list[Finding]:
    """Run the kernel's invariant checks (1 to 3, 6) and ``checks``; a finding per invariant.

    The liability (4) and the statements (5) are settlement's numbers: ``coalition check``
    runs them all through :func:`settlement.check.run_checks`, which passes its own here.
    """
    every = sorted((*CHECKS, *checks), key=lambda c: c[0])
    return [Finding(number, name, check(session)) for number, name, check in every]
