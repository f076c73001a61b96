"""What every operation shares (:class:`OperationBase`): settings, sessions and clock, the unit
of work, the checks of references, points, money and currencies, and the reference lookups.
The operations themselves live by area (:mod:`partners.earning`, :mod:`partners.spending`,
:mod:`partners.corrections`) behind the one façade, :class:`partners.operations.Operations`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import cast

from sqlalchemy import Engine, Table, bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from coalition import ledger, text
from coalition.config import Settings
from coalition.db import AnyOf, owns_rollback, transaction, utcnow
from coalition.errors import (
    CurrencyMismatch,
    DuplicateReference,
    InvariantViolated,
    ValidationFailed,
)
from coalition.models import Transaction
from coalition.money import MAX_POINTS, MoneyError, exponent, parse_amount
from partners.rates import (
    PartnerTerms,
)

REFERENCE_RE = re.compile(r"[\x21-\x7e]{1,255}")
#: How far ahead of the server's clock an ``occurred_at`` may be (clock skew).
CLOCK_SKEW = timedelta(minutes=5)
REASON_MAX = 500

_TRANSACTIONS = cast("Table", Transaction.__table__)
# Pre-built, as the ledger's hot path (docs/benchmarks.md).
_REFERENCE_CONDITIONS = (
    _TRANSACTIONS.c.partner_id == bindparam("partner"),
    _TRANSACTIONS.c.kind == bindparam("kind"),
    _TRANSACTIONS.c.hold_id.is_(None),
)
_FIND_REFERENCE = select(_TRANSACTIONS.c.id).where(
    *_REFERENCE_CONDITIONS, _TRANSACTIONS.c.reference == bindparam("reference")
)
_FIND_REFERENCES = select(_TRANSACTIONS.c.reference, _TRANSACTIONS.c.id).where(
    *_REFERENCE_CONDITIONS,
    AnyOf(_TRANSACTIONS.c.reference, "references"),
)


def _check_reference(reference: str, path: str = "reference") -> None:
    if not isinstance(reference, str) or not REFERENCE_RE.fullmatch(reference):
        raise ValidationFailed.at(path, "1 to 255 visible ASCII characters")


def _check_points(points: int, path: str = "points") -> None:
    if isinstance(points, bool) or not isinstance(points, int) or not 0 < points <= MAX_POINTS:
        raise ValidationFailed.at(path, f"a whole number of points from 1 to {MAX_POINTS}")


def _money(raw: str, currency: str, path: str) -> Decimal:
    try:
        return parse_amount(raw, currency, path=path)
    except MoneyError as exc:
        raise ValidationFailed.at(exc.path, str(exc)) from None


def _check_currency(partner: PartnerTerms, currency: str) -> None:
    try:
        exponent(currency)
    except MoneyError as exc:
        raise ValidationFailed.at("currency", str(exc)) from None
    if currency != partner.currency:
        raise CurrencyMismatch(
            f"partner {partner.id} settles in {partner.currency}, not {currency}",
            expected=partner.currency,
        )


class OperationBase:
    """What every operation shares: the settings, the sessions, the clock, the unit of work
    (its own transaction or a savepoint in the caller's), and the rules every area applies."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.clock = clock

    @property
    def engine(self) -> Engine:
        """The engine the sessions are bound to."""
        bind = self.sessions.kw.get("bind")
        if not isinstance(bind, Engine):
            raise InvariantViolated("the sessions are bound to no engine")
        return bind

    # --- transactions --------------------------------------------------------------------

    @contextlib.contextmanager
    def unit(self, session: Session | None = None) -> Iterator[Session]:
        """One operation's transaction: its own, or a savepoint in the caller's ``session``
        (none when the caller rolls its whole transaction back on any error, as the API does:
        :func:`coalition.db.owns_rollback`, or has a savepoint of its own open).
        """
        if session is None:
            with transaction(self.sessions) as own:
                yield own
        elif owns_rollback(session) or session.in_nested_transaction():
            yield session
        else:
            with session.begin_nested():
                yield session

    @contextlib.contextmanager
    def reading(self, session: Session | None = None) -> Iterator[Session]:
        """A read's transaction: its own, or the caller's ``session`` as it is (a read writes
        nothing a savepoint would have to undo)."""
        if session is None:
            with transaction(self.sessions) as own:
                yield own
        else:
            yield session

    @contextlib.contextmanager
    def batch(self) -> Iterator[Session]:
        """One transaction for many operations (pass it as ``session=``); commits at the end."""
        with transaction(self.sessions) as session:
            yield session

    def _raise_duplicate(
        self, session: Session | None, partner_id: str, kind: str, reference: str
    ) -> None:
        """After a unique-key race: name the transaction that holds the reference. (Inside a
        transaction its owner rolls back whole, the race goes up as it is: that transaction is
        aborted, and its owner runs the request again.)"""
        if owns_rollback(session):
            return
        with self.unit(session) as s:
            existing = _find_reference(s, partner_id, kind, reference)
        if existing is not None:
            raise DuplicateReference(
                f"reference {reference!r} was already used by {existing}",
                transaction_id=existing,
            )

    def _expires_at(self, start: datetime) -> datetime:
        return start + timedelta(days=self.settings.points_validity_days)

    def _settle_due(
        self, session: Session, member_id: str, now: datetime, due: tuple[int, int] | None = None
    ) -> None:
        """Release the member's expired holds and expire its due lots before it acts again.

        ``due``: what :func:`ledger.member_due` counted at ``now``, when the caller has it.
        """
        due_lots, due_holds = due if due is not None else ledger.member_due(session, member_id, now)
        if due_holds:
            ledger.expire_holds(session, ledger.member_due_holds(session, member_id, now), now)
        if due_lots:
            ledger.expire_lots(session, [member_id], now)

    def _refuse_used_reference(self, s: Session, partner_id: str, kind: str, ref: str) -> None:
        _refuse_reference_used_by(ref, _find_reference(s, partner_id, kind, ref))


def _check_reason(reason: str) -> str:
    """The reason as stored: the service's text rule (:mod:`coalition.text`)."""
    return text.clean(reason, "reason", max_length=REASON_MAX)


def _refuse_reference_used_by(reference: str, used_by: str | None) -> None:
    """:class:`DuplicateReference` naming the transaction when the reference was used."""
    if used_by is not None:
        raise DuplicateReference(
            f"reference {reference!r} was already used by {used_by}", transaction_id=used_by
        )


def _find_reference(s: Session, partner_id: str, kind: str, reference: str) -> str | None:
    return s.scalar(_FIND_REFERENCE, {"partner": partner_id, "kind": kind, "reference": reference})


def _find_references(
    s: Session, partner_id: str, kind: str, references: Sequence[str]
) -> dict[str, str]:
    """:func:`_find_reference` of many references at once: ``{reference: transaction id}``."""
    if not references:
        return {}
    rows = s.execute(
        _FIND_REFERENCES,
        {"partner": partner_id, "kind": kind, "references": sorted(set(references))},
    ).all()
    return {reference: txn_id for reference, txn_id in rows}
