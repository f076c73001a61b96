"""Writes of the layers above that ride the statement writing a ledger transaction, instead of
statements of their own.

On PostgreSQL a batch of one credit or plain debit is written by one statement
(:mod:`~coalition.ledger.shortcuts`) whose CTE ``t`` is the transaction's row (``RETURNING
id``). A signed request that answers with the transaction it posts sends its own writes in
that statement: the Idempotency-Key's stored response and the transaction's webhook event
(``api.idempotency``, ``partners.webhooks.outbox``): one statement and one round trip less
per earn or burn. Each rider's CTEs select ``FROM t``, so they write exactly when the
transaction is written; when the one-statement form writes nothing (the member owes points,
its tier window must be read under the lock first...) the batch path posts the movement, the
riders are not carried, and the layers above write theirs as they would have.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from coalition.ledger.post import Header


@dataclass(frozen=True, slots=True)
class Rider:
    """``ctes`` (``name AS (...), ...``, each selecting ``FROM t``; parameter names of their
    own, none of the transaction's); ``values`` gives their values for a transaction
    (``None``: nothing to carry for it); ``carried`` is told once the statement wrote it."""

    ctes: str
    values: Callable[[Header], dict[str, Any] | None]
    carried: Callable[[Session, Header], None]


#: ``Session.info`` key: the kind of transaction the riders wait for, and the riders.
_WAITING = "coalition_riders"


def ride(session: Session, kind: str, riders: Sequence[Rider]) -> None:
    """Send ``riders`` in the statement that writes this database transaction's ledger
    transaction of ``kind`` (a :class:`~coalition.models.TransactionKind`'s value) in one
    statement (PostgreSQL), if one does."""
    session.info[_WAITING] = (kind, tuple(riders))


def alight(session: Session) -> None:
    """Forget riders not carried (the operation is over)."""
    session.info.pop(_WAITING, None)


def boarding(session: Session, header: Header) -> tuple[str, dict[str, Any], tuple[Rider, ...]]:
    """The riders waiting for ``header``'s statement: their CTEs (joined), their values, and
    the riders (to tell :func:`arrived`); ``("", {}, ())`` when none wait for it."""
    waiting: tuple[str, tuple[Rider, ...]] | None = session.info.get(_WAITING)
    if waiting is None or waiting[0] != header.kind:
        return "", {}, ()
    ctes: list[str] = []
    values: dict[str, Any] = {}
    aboard: list[Rider] = []
    for rider in waiting[1]:
        found = rider.values(header)
        if found is not None:
            ctes.append(rider.ctes)
            values.update(found)
            aboard.append(rider)
    return ", ".join(ctes), values, tuple(aboard)


def arrived(session: Session, header: Header, aboard: tuple[Rider, ...]) -> None:
    """``header``'s statement wrote its transaction, and with it what ``aboard`` carried."""
    session.info.pop(_WAITING, None)
    for rider in aboard:
        rider.carried(session, header)
