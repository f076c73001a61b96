"""What the ledger tells the layers above it, from its one write path: a listener registered
here hears every posted transaction and every hold that leaves ``active``, in the database
transaction that wrote it, whichever statements wrote it. The webhook outbox is one; the
ledger knows nothing of what a listener does."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from sqlalchemy.orm import Session

from coalition.models import Hold, HoldStatus, Transaction


class Listener(Protocol):
    """Called by the ledger inside the writing transaction; must not commit or roll back."""

    def transactions_posted(self, session: Session, txns: Sequence[Transaction]) -> None:
        """Transactions just posted (a batch of one or of thousands)."""

    def hold_closed(
        self,
        session: Session,
        hold: Hold,
        status: HoldStatus,
        now: datetime,
        *,
        captured_points: int | None = None,
        transaction_id: str | None = None,
    ) -> None:
        """A hold left ``active`` (``transaction_id``: a capture's burn)."""


_LISTENERS: list[Listener] = []


def listen(listener: Listener) -> None:
    """Register ``listener`` (once; registering it again changes nothing)."""
    if listener not in _LISTENERS:
        _LISTENERS.append(listener)


def transactions_posted(session: Session, txns: Sequence[Transaction]) -> None:
    """Tell every listener of posted transactions."""
    for listener in _LISTENERS:
        listener.transactions_posted(session, txns)


def hold_closed(
    session: Session,
    hold: Hold,
    status: HoldStatus,
    now: datetime,
    *,
    captured_points: int | None = None,
    transaction_id: str | None = None,
) -> None:
    """Tell every listener that a hold left ``active``."""
    for listener in _LISTENERS:
        listener.hold_closed(
            session,
            hold,
            status,
            now,
            captured_points=captured_points,
            transaction_id=transaction_id,
        )
