"""Holds: points reserved at checkout, captured (a burn), voided or expired. Placing and
closing one are movements of the one write path (:class:`~coalition.ledger.post.PlaceHold`,
:class:`~coalition.ledger.post.CloseHold`, posted by :func:`~coalition.ledger.batch.post`);
here the batches that capture and expire, and the reads that find and lock holds."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from coalition.errors import InvariantViolated, invariant
from coalition.ledger.batch import post
from coalition.ledger.post import CloseHold, Debit, Header
from coalition.ledger.reads import HoldPosted, Posted
from coalition.ledger.tables import EXPIRY_BATCH
from coalition.models import Hold, HoldStatus


def capture_hold(
    session: Session, *, hold: Hold, header: Header, to_account: int, now: datetime
) -> Posted:
    """Turn an active hold into a burn of the header's points (at most the held points, the
    header naming the hold, its member and its reference); release the rest: one batch, the
    hold closed and the burn.

    The hold guaranteed the points to the partner, so the capture always succeeds; if a
    clawback took the member's lots meanwhile, the shortfall becomes the member's deficit.
    """
    points = header.points
    invariant(
        hold.status == HoldStatus.ACTIVE and 0 < points <= hold.points,
        f"capture of {points} from {hold.status} hold {hold.id} of {hold.points}",
    )
    invariant(
        (header.hold_id, header.member_id, header.reference)
        == (hold.id, hold.member_id, hold.reference),
        f"{header.id} is not a capture of {hold.id}",
    )
    close = CloseHold(
        hold, HoldStatus.CAPTURED, now, captured_points=points, transaction_id=header.id
    )
    burn = Debit(header, to_account=to_account, overdraw=True)
    _, posted = post(session, [close, burn])
    if not isinstance(posted, Posted):
        raise InvariantViolated(f"{header.id}: the capture's burn posted no transfer")
    return posted


def expire_holds(session: Session, holds: Sequence[Hold], now: datetime) -> list[HoldPosted]:
    """Release the holds (active, past their expiry, locked by the caller): one batch."""
    return post(session, [CloseHold(hold, HoldStatus.EXPIRED, now) for hold in holds])


def lock_hold(session: Session, hold_id: str, partner_id: str) -> Hold | None:
    """The partner's hold, locked for a status change; ``None`` if it is not the partner's."""
    row = session.execute(
        select(Hold).where(Hold.id == hold_id, Hold.partner_id == partner_id).with_for_update()
    ).scalar_one_or_none()
    if row is not None:
        session.expunge(row)
    return row


def due_holds(session: Session, now: datetime, limit: int = EXPIRY_BATCH) -> list[Hold]:
    """Active holds past their expiry, locked with SKIP LOCKED on PostgreSQL."""
    holds = list(
        session.scalars(
            select(Hold)
            .where(Hold.status == "active", Hold.expires_at <= now)
            .order_by(Hold.expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    for hold in holds:
        session.expunge(hold)
    return holds


def member_due_holds(session: Session, member_id: str, now: datetime) -> list[Hold]:
    """The member's active holds past their expiry (released before the member acts again)."""
    holds = list(
        session.scalars(
            select(Hold)
            .where(Hold.member_id == member_id, Hold.status == "active", Hold.expires_at <= now)
            .with_for_update()
        )
    )
    for hold in holds:
        session.expunge(hold)
    return holds
