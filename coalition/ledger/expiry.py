"""Points expiry (breakage): the members' lots past their date, one batch of debits."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coalition.ledger.batch import post
from coalition.ledger.post import Debit, Header, lock_members
from coalition.ledger.reads import Posted
from coalition.ledger.tables import EXPIRY_BATCH
from coalition.models import (
    OPERATOR_ACCOUNTS,
    Lot,
    Member,
    TransactionKind,
)


def expire_lots(session: Session, member_ids: Iterable[str], now: datetime) -> list[Posted]:
    """Expire the members' lots whose date has passed (breakage), one expiry transfer per
    member that has any, posted as one batch (:func:`~coalition.ledger.batch.post`).

    Held points are protected: expiry takes at most the member's available points, and what it
    leaves stays open (and is spent first) until the hold ends and the next run takes it.
    """
    members = lock_members(session, member_ids)  # first: the lots read below are then theirs
    if not members:
        return []
    due = dict(
        session.execute(
            select(Lot.member_id, func.sum(Lot.remaining))
            .where(Lot.member_id.in_(list(members)), Lot.remaining > 0, Lot.expires_at <= now)
            .group_by(Lot.member_id)
        ).all()
    )
    breakage = OPERATOR_ACCOUNTS["operator_breakage"]
    debits = []
    for member_id, locked in members.items():
        points = min(int(due.get(member_id, 0)), max(locked.state.available, 0))
        if points > 0:
            header = Header(
                kind=TransactionKind.EXPIRY,
                member_id=member_id,
                points=points,
                occurred_at=now,
                posted_at=now,
            )
            debits.append(Debit(header, to_account=breakage, expired_by=now))
    return post(session, debits, {d.member_id: members[d.member_id] for d in debits})


def members_with_expired_lots(
    session: Session, now: datetime, after_member: str | None, limit: int = EXPIRY_BATCH
) -> list[str]:
    """Member ids (ascending, after ``after_member``) that hold lots past their expiry.

    On PostgreSQL the member rows are locked with SKIP LOCKED, so several workers share the
    work and none waits for another.
    """
    due = select(Lot.member_id).where(Lot.remaining > 0, Lot.expires_at <= now)
    stmt = (
        select(Member.id)
        .where(Member.id.in_(due.scalar_subquery()))
        .order_by(Member.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if after_member is not None:
        stmt = stmt.where(Member.id > after_member)
    return list(session.scalars(stmt))
