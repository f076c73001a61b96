"""Points expiry (breakage): the member's lots past their date."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    func,
    select,
)
from sqlalchemy.orm import Session

from coalition.errors import invariant
from coalition.ledger.lots import (
    _take,
)
from coalition.ledger.post import (
    Header,
    _between,
    _require_member_change,
    _write,
)
from coalition.ledger.reads import (
    Posted,
    member_state,
)
from coalition.ledger.tables import EXPIRY_BATCH
from coalition.models import (
    OPERATOR_ACCOUNTS,
    Lot,
    Member,
    TransactionKind,
)

# --- expiry ------------------------------------------------------------------------------


def expire_member_lots(session: Session, member_id: str, now: datetime) -> Posted | None:
    """Expire the member's lots whose date has passed (breakage); ``None`` if nothing expires.

    Held points are protected: expiry takes at most the member's available points, and what it
    leaves stays open (and is spent first) until the hold ends and the next run takes it.
    """
    due = session.scalar(
        select(func.coalesce(func.sum(Lot.remaining), 0)).where(
            Lot.member_id == member_id, Lot.remaining > 0, Lot.expires_at <= now
        )
    )
    state = member_state(session, member_id)
    points = min(int(due or 0), max(state.available, 0))
    if points <= 0:
        return None
    after, member_acct = _require_member_change(
        session, member_id, balance_delta=-points, need_available=points
    )
    header = Header(
        kind=TransactionKind.EXPIRY,
        member_id=member_id,
        points=points,
        occurred_at=now,
        posted_at=now,
    )
    breakage = OPERATOR_ACCOUNTS["operator_breakage"]
    header = _between(header, member_acct, breakage, to_member=False)
    txn = _write(session, header, after.balance)
    taken = _take(session, member_id, txn.id, points, expired_by=now)
    invariant(taken == points, f"{txn.id}: expired lots gave {taken} of {points}")
    return Posted(txn, after)


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
