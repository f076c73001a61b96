"""Holds: points reserved at checkout, captured (a burn), voided or expired."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    insert,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from coalition.db import HotStatement, dialect_of
from coalition.errors import invariant
from coalition.ids import new_id
from coalition.ledger import listeners
from coalition.ledger.batch import post
from coalition.ledger.post import (
    Debit,
    Header,
    _require_member_change,
)
from coalition.ledger.reads import (
    MemberState,
    Posted,
)
from coalition.ledger.tables import EXPIRY_BATCH
from coalition.models import (
    Hold,
    HoldStatus,
)


def place_hold(
    session: Session,
    *,
    partner_id: str,
    member_id: str,
    reference: str,
    points: int,
    expires_at: datetime,
    now: datetime,
) -> tuple[Hold, MemberState]:
    """Reserve ``points`` of the member's available balance (:class:`InsufficientPoints`)."""
    invariant(points > 0, f"a hold of {points} points")
    state, _ = _require_member_change(
        session, member_id, balance_delta=0, held_delta=points, need_available=points
    )
    values = {
        "id": new_id("hold"),
        "partner_id": partner_id,
        "member_id": member_id,
        "reference": reference,
        "points": points,
        "status": "active",
        "expires_at": expires_at,
        "created_at": now,
        "closed_at": None,
        "captured_points": None,
    }
    session.execute(insert(Hold), [values])
    hold = Hold(**values)
    return hold, state


def capture_hold(
    session: Session, *, hold: Hold, header: Header, to_account: int, now: datetime
) -> Posted:
    """Turn an active hold into a burn of the header's points (at most the held points, the
    header naming the hold, its member and its reference); release the rest.

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
    debit = Debit(header, to_account=to_account, overdraw=True, held_delta=-hold.points)
    posted = post(session, [debit])[0]
    txn = posted.transaction
    _close_hold(session, hold, HoldStatus.CAPTURED, now, captured_points=points, txn_id=txn.id)
    return posted


def release_hold(session: Session, *, hold: Hold, status: str, now: datetime) -> MemberState:
    """Void or expire an active hold: its points are available again."""
    invariant(
        hold.status == HoldStatus.ACTIVE and status in (HoldStatus.VOIDED, HoldStatus.EXPIRED),
        f"{status} of {hold.status} hold {hold.id}",
    )
    state, _ = _require_member_change(
        session, hold.member_id, balance_delta=0, held_delta=-hold.points
    )
    _close_hold(session, hold, HoldStatus(status), now)
    return state


def _close_hold(
    session: Session,
    hold: Hold,
    status: HoldStatus,
    now: datetime,
    *,
    captured_points: int | None = None,
    txn_id: str | None = None,
) -> None:
    """Where a hold leaves ``active`` on the general path (and its webhook event is noted);
    :func:`void_in_one` is the one other place, and notes the same event."""
    closed = session.execute(
        update(Hold)
        .where(Hold.id == hold.id, Hold.status == "active")
        .values(status=status, closed_at=now, captured_points=captured_points),
        execution_options={"synchronize_session": False},
    )
    invariant(closed.rowcount == 1, f"hold {hold.id} was not active")  # type: ignore[attr-defined]
    listeners.hold_closed(
        session, hold, status, now, captured_points=captured_points, transaction_id=txn_id
    )


# A void in one statement (PostgreSQL): the partner's hold, if active and not past its expiry,
# closed (and so locked, before the member row, as the general path locks them), and its
# points released on the member row.
_VOID_IN_ONE = HotStatement(
    text(
        """
        WITH h AS (
            UPDATE holds SET status = 'voided', closed_at = :now
            WHERE id = :hold AND partner_id = :partner AND status = 'active'
                AND expires_at > :now
            RETURNING id, partner_id, member_id, reference, points, expires_at, created_at
        ), m AS (
            UPDATE members SET held = members.held - h.points FROM h
            WHERE members.id = h.member_id
            RETURNING members.balance, members.held
        )
        SELECT h.id, h.partner_id, h.member_id, h.reference, h.points, h.expires_at,
            h.created_at, m.balance, m.held
        FROM h, m
        """
    )
)


def void_in_one(
    session: Session, *, hold_id: str, partner_id: str, now: datetime
) -> tuple[Hold, MemberState] | None:
    """Void the partner's active hold in one statement on PostgreSQL: the hold as closed and
    the member after it; ``None`` (nothing written) elsewhere, or when the hold is not the
    partner's, not active or past its expiry (the general path then says which)."""
    if dialect_of(session) != "postgresql":
        return None
    row = _VOID_IN_ONE.first(session, {"hold": hold_id, "partner": partner_id, "now": now})
    if row is None:
        return None
    hold_id, partner, member_id, reference, points, expires_at, created_at, balance, held = row
    hold = Hold(
        id=hold_id,
        partner_id=partner,
        member_id=member_id,
        reference=reference,
        points=points,
        status=HoldStatus.VOIDED.value,
        expires_at=expires_at.astimezone(UTC),
        created_at=created_at.astimezone(UTC),
        closed_at=now,
        captured_points=None,
    )
    listeners.hold_closed(session, hold, HoldStatus.VOIDED, now)
    return hold, MemberState(member_id, balance, held)


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
