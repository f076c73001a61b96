"""``coalition check``: verify every ledger invariant of docs/invariants.md on a database.

Each check is one SQL aggregate over the whole ledger (a full audit, not a hot-path query) and
reports at most :data:`SAMPLE` offending ids, so a report stays readable at any size. The kernel
checks invariants 1 to 3 here (the ledger's own, ``coalition.ledger.check``); the outbox's (6)
is ``partners.webhooks.check``'s, the liability (4), the statements (5) and the payments (7) are
checked by ``settlement.check``, where those numbers are computed, which runs them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

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


CHECKS: list[tuple[int, str, Callable[[Session], list[str]]]] = [*LEDGER_CHECKS]


def run_checks(
    session: Session, checks: Sequence[tuple[int, str, Callable[[Session], list[str]]]] = ()
) -> list[Finding]:
    """Run the kernel's invariant checks (1 to 3) and ``checks``; a finding per invariant.

    The outbox (6) is the webhooks', the liability (4) and the statements (5) settlement's:
    ``coalition check`` runs them all through :func:`settlement.check.run_checks`, which
    passes them here.
    """
    every = sorted((*CHECKS, *checks), key=lambda c: c[0])
    return [Finding(number, name, check(session)) for number, name, check in every]
