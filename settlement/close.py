"""The settlement close: a period per cut-off and a signed statement per partner, at once.

Closing is idempotent and safe when several processes try at once; the schema holds it, not a
lock held in Python: periods have a unique ``end_at`` (one period per cut-off) and a unique
``start_at`` (two processes closing from the same last cut-off cannot both succeed), statements
a unique ``(period_id, partner_id)``. A process that loses the race gets an integrity error,
rolls back everything it did and looks again: it then finds the period the winner committed.
The period, its statements, their lines and signatures are one database transaction.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer, sessionmaker

from coalition.config import Settings
from coalition.db import transaction
from coalition.errors import ValidationFailed
from coalition.ids import new_id
from coalition.models import Transaction
from coalition.money import exponent
from partners.models import Partner
from settlement.cycles import latest_cutoff, previous_cutoff
from settlement.lines import Unbillable, cross_brand_rows, insert_lines, unbillable
from settlement.models import Period, Statement, StatementEvent
from settlement.signing import signer
from settlement.statements import issue_all

log = logging.getLogger("coalition.settlement")

#: Attempts of a close that lost a race to another process before it gives up.
MAX_CLOSE_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Closed:
    """A closed period and its statements; ``created`` is False when it was closed before.
    ``unbilled``: the postings the close left off (too large to bill, see
    :func:`settlement.statements.unbillable`); ``coalition check`` reports them too."""

    period: Period
    statements: list[Statement]
    created: bool
    unbilled: list[Unbillable] = field(default_factory=list)


def _period_at(session: Session, cut_off: datetime) -> Period | None:
    return session.scalars(select(Period).where(Period.end_at == cut_off)).one_or_none()


def last_period(session: Session) -> Period | None:
    """The most recently closed period (the latest cut-off)."""
    return session.scalars(select(Period).order_by(Period.end_at.desc()).limit(1)).one_or_none()


def _first_start(session: Session, cut_off: datetime, cycle: str, tz: ZoneInfo) -> datetime:
    """The first period starts at the scheduled cut-off at or before the ledger's first
    posting (or one cycle before the cut-off on an empty ledger)."""
    first = session.scalar(select(func.min(Transaction.posted_at)))
    if first is not None and first < cut_off:
        return latest_cutoff(first, cycle, tz)
    return previous_cutoff(cut_off, cycle, tz)


def statements_of(session: Session, period_id: str) -> list[Statement]:
    """The period's statements, in partner order."""
    return list(
        session.scalars(
            select(Statement)
            .where(Statement.period_id == period_id)
            .order_by(Statement.partner_id)
            .options(defer(Statement.document))
            .execution_options(populate_existing=True)
        )
    )


def close(
    sessions: sessionmaker[Session],
    *,
    secret_key: bytes,
    cycle: str,
    tz: ZoneInfo,
    now: datetime,
    cut_off: datetime | None = None,
    key_id: str | None = None,
    role: str = "system",
) -> Closed:
    """Close the open period at ``cut_off`` (default: the latest scheduled cut-off that has
    passed). The same cut-off again returns the period closed then; a cut-off in the future,
    or before the last one, is :class:`ValidationFailed` at ``$.cut_off``."""
    with transaction(sessions) as session:
        return close_in(
            session,
            secret_key=secret_key,
            cycle=cycle,
            tz=tz,
            now=now,
            cut_off=cut_off,
            key_id=key_id,
            role=role,
        )


def close_in(
    session: Session,
    *,
    secret_key: bytes,
    cycle: str,
    tz: ZoneInfo,
    now: datetime,
    cut_off: datetime | None = None,
    key_id: str | None = None,
    role: str = "system",
) -> Closed:
    """:func:`close` inside the caller's transaction (the API's idempotent POST): each attempt
    under a savepoint, so losing the race to another process costs only that attempt."""
    if cut_off is None:
        cut_off = latest_cutoff(now, cycle, tz)
    if cut_off.tzinfo is None:
        raise ValidationFailed.at("cut_off", "a time with a time zone")
    if cut_off > now:
        raise ValidationFailed.at("cut_off", "a cut-off may not be in the future")
    for attempt in range(MAX_CLOSE_ATTEMPTS):
        try:
            with session.begin_nested():
                return _close_once(
                    session,
                    secret_key=secret_key,
                    cycle=cycle,
                    tz=tz,
                    now=now,
                    cut_off=cut_off,
                    key_id=key_id,
                    role=role,
                )
        except IntegrityError:
            # Another process closed first (a unique key said so); look again.
            if attempt == MAX_CLOSE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _close_once(
    session: Session,
    *,
    secret_key: bytes,
    cycle: str,
    tz: ZoneInfo,
    now: datetime,
    cut_off: datetime,
    key_id: str | None,
    role: str,
) -> Closed:
    # One read decides (READ COMMITTED gives each statement a fresh snapshot): if another
    # process commits its close after this read, the insert below collides with it on the
    # unique start_at, this attempt rolls back, and the next one finds that period here.
    last = last_period(session)
    if last is not None and cut_off <= last.end_at:
        existing = _period_at(session, cut_off)
        if existing is not None:
            left_off = unbillable(session, existing, existing.start_at)
            return Closed(existing, statements_of(session, existing.id), False, left_off)
        raise ValidationFailed.at(
            "cut_off",
            f"must be later than the last cut-off, {last.end_at.isoformat()}, or equal to a "
            "closed period's end",
        )
    start = last.end_at if last is not None else _first_start(session, cut_off, cycle, tz)
    if start >= cut_off:
        raise ValidationFailed.at("cut_off", "the period would be empty")
    period = Period(
        id=new_id("per"),
        start_at=start,
        end_at=cut_off,
        closed_at=now,
        cycle=cycle if latest_cutoff(cut_off, cycle, tz) == cut_off else "off-cycle",
    )
    session.add(period)
    session.flush()
    _open_statements(session, period, now)
    lower = last.start_at if last is not None else start
    insert_lines(session, period, lower)
    left_off = unbillable(session, period, lower)
    for row in left_off:
        log.error(
            "close %s: transaction %s of %s left off its statement: %s",
            period.id,
            row.transaction_id,
            row.partner_id,
            row.reason,
        )
    _issue(session, period, secret_key=secret_key, now=now, key_id=key_id, role=role)
    return Closed(period, statements_of(session, period.id), True, left_off)


def _open_statements(session: Session, period: Period, now: datetime) -> None:
    """A statement of the period for every partner that existed before its cut-off."""
    partners = session.execute(
        select(Partner.id, Partner.currency)
        .where(Partner.created_at < period.end_at)
        .order_by(Partner.id)
    ).all()
    if partners:
        session.execute(
            insert(Statement),
            [
                {
                    "id": new_id("stmt"),
                    "period_id": period.id,
                    "partner_id": partner_id,
                    "currency": currency,
                    "currency_exponent": exponent(currency),
                    "status": "issued",
                    "issued_at": now,
                }
                for partner_id, currency in partners
            ],
        )


def _issue(
    session: Session,
    period: Period,
    *,
    secret_key: bytes,
    now: datetime,
    key_id: str | None,
    role: str,
) -> None:
    """Sign and issue the period's statements (lines written), each with its first event."""
    cross: dict[str, list[tuple[str | None, int]]] = defaultdict(list)
    for burned_at, origin, points in cross_brand_rows(session, period.id):
        cross[burned_at].append((origin, points))
    sign = signer(session, secret_key=secret_key, now=now)
    statements = statements_of(session, period.id)
    issue_all(session, statements, period, cross, signer=sign)
    if statements:
        session.execute(
            insert(StatementEvent),
            [
                {
                    "statement_id": s.id,
                    "from_status": None,
                    "to_status": "issued",
                    "at": now,
                    "key_id": key_id,
                    "role": role,
                    "note": f"closed at {period.end_at.isoformat()}",
                }
                for s in statements
            ],
        )


def close_due(sessions: sessionmaker[Session], settings: Settings, now: datetime) -> int:
    """The scheduled job: close at the latest scheduled cut-off unless a period already ends
    there or later; how many statements it issued."""
    cut_off = latest_cutoff(now, settings.settlement_cycle, settings.tz)
    with transaction(sessions) as session:
        last = last_period(session)
    if last is not None and last.end_at >= cut_off:
        return 0
    closed = close(
        sessions,
        secret_key=settings.secret_key,
        cycle=settings.settlement_cycle,
        tz=settings.tz,
        now=now,
        cut_off=cut_off,
    )
    return len(closed.statements) if closed.created else 0
