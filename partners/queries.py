"""Read queries for the API: transaction and partner listings.

Listings page by :mod:`coalition.pages` (keyset pagination on the time-ordered id).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from coalition.errors import ValidationFailed
from coalition.models import TRANSACTION_KINDS, Transaction
from coalition.pages import MAX_PAGE, Page, newest_first
from partners.models import Partner, RateCard


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
    if kind is not None and kind not in TRANSACTION_KINDS:
        raise ValidationFailed.at("kind", f"one of {', '.join(TRANSACTION_KINDS)}")
    if since is not None and until is not None and until <= since:
        raise ValidationFailed.at("until", "must be later than since")
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
    return newest_first(
        session, stmt, Transaction.id, before_id=before_id, limit=limit, expunge=True
    )


def list_partners(
    session: Session, *, before_id: str | None = None, limit: int = 100
) -> Page[Partner]:
    """Partners newest first (by id)."""
    return newest_first(
        session, select(Partner), Partner.id, before_id=before_id, limit=limit, expunge=True
    )


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
