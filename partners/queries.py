"""Read queries for the API: transaction and partner listings.

Listings use keyset pagination on the time-ordered primary key (``txn_...``, ``prt_...``): a
page is "the next ``limit`` rows after this id", so rows inserted while a client pages never
shift, duplicate or skip the rows it has not seen yet, and every page costs one index range
scan however deep it is. Every listing is bounded by :data:`MAX_PAGE`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from coalition.errors import InvariantViolated, ValidationFailed
from coalition.models import TRANSACTION_KINDS, Transaction
from partners.models import Partner, RateCard

#: The largest page any listing returns.
MAX_PAGE = 500

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """Rows of one page, newest first; ``has_more`` says whether a next page exists."""

    rows: list[T]
    has_more: bool

    @property
    def last_id(self) -> str | None:
        """The id to continue after (the oldest row of this page), when there is more."""
        if not self.has_more or not self.rows:
            return None
        last = self.rows[-1]
        row_id = getattr(last, "id", None)
        if not isinstance(row_id, str):
            raise InvariantViolated(f"a page of rows without string ids: {last!r}")
        return row_id


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationFailed.at("query.limit", f"from 1 to {MAX_PAGE}")


def list_transactions(
    session: Session,
    *,
    partner_id: str | None,
    member_id: str | None = None,
    kind: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: str | None = None,
    limit: int = 100,
) -> Page[Transaction]:
    """Transactions newest first (by id), filtered; a partner (``partner_id``) sees only its own.

    ``since``/``until`` bound ``posted_at`` (``since <= posted_at < until``); ``before_id``
    continues a listing after the last id of the previous page.
    """
    _check_limit(limit)
    if kind is not None and kind not in TRANSACTION_KINDS:
        raise ValidationFailed.at("query.kind", f"one of {', '.join(TRANSACTION_KINDS)}")
    if since is not None and until is not None and until <= since:
        raise ValidationFailed.at("query.until", "must be later than since")
    stmt = select(Transaction)
    if partner_id is not None:
        stmt = stmt.where(Transaction.partner_id == partner_id)
    if member_id is not None:
        stmt = stmt.where(Transaction.member_id == member_id)
    if kind is not None:
        stmt = stmt.where(Transaction.kind == kind)
    if since is not None:
        stmt = stmt.where(Transaction.posted_at >= since)
    if until is not None:
        stmt = stmt.where(Transaction.posted_at < until)
    if before_id is not None:
        stmt = stmt.where(Transaction.id < before_id)
    rows = list(session.scalars(stmt.order_by(Transaction.id.desc()).limit(limit + 1)))
    for row in rows:
        session.expunge(row)
    return Page(rows[:limit], len(rows) > limit)


def list_partners(
    session: Session, *, before_id: str | None = None, limit: int = 100
) -> Page[Partner]:
    """Partners newest first (by id)."""
    _check_limit(limit)
    stmt = select(Partner)
    if before_id is not None:
        stmt = stmt.where(Partner.id < before_id)
    rows = list(session.scalars(stmt.order_by(Partner.id.desc()).limit(limit + 1)))
    for row in rows:
        session.expunge(row)
    return Page(rows[:limit], len(rows) > limit)


def partner_names(session: Session, partner_ids: Iterable[str]) -> dict[str, str]:
    """The names of these partners, by id (unknown ids are left out)."""
    wanted = sorted(set(partner_ids))[:MAX_PAGE]
    if not wanted:
        return {}
    rows = session.execute(select(Partner.id, Partner.name).where(Partner.id.in_(wanted)))
    return {partner_id: name for partner_id, name in rows}


def active_rate_card(session: Session, partner_id: str, at: datetime) -> RateCard | None:
    """The partner's rate card in force at ``at``, or ``None`` when none is yet."""
    return session.scalars(
        select(RateCard)
        .where(RateCard.partner_id == partner_id, RateCard.effective_from <= at)
        .order_by(RateCard.effective_from.desc())
        .limit(1)
    ).first()
