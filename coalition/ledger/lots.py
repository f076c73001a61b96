"""Lots: the points a member received together; taken soonest-expiring first, a clawback's
deficit, and the movements that record every change."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import cast

from sqlalchemy import (
    Row,
    Table,
    and_,
    bindparam,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from coalition.errors import invariant
from coalition.ledger.tables import (
    _LOTS,
)
from coalition.models import (
    Lot,
    LotMovement,
)

_INSERT_LOT = insert(_LOTS)
_UPDATE_LOT = update(_LOTS).where(_LOTS.c.id == bindparam("lot")).values(remaining=bindparam("to"))
_INSERT_LOT_MOVEMENTS = insert(cast("Table", LotMovement.__table__))

#: Lots read per round trip when taking points from a member's lots (the first read is
#: smaller: most debits are covered by a member's few soonest-expiring lots).
LOT_PAGE = 200
LOT_FIRST_PAGE = 16

# --- lots --------------------------------------------------------------------------------


def _move(session: Session, txn_id: str, moves: list[tuple[int, str | None, int, int]]) -> None:
    """Apply lot moves ``(lot_id, origin, delta, new_remaining)`` and record each one."""
    if not moves:
        return
    session.execute(
        _UPDATE_LOT, [{"lot": lot_id, "to": remaining} for lot_id, _, _, remaining in moves]
    )
    session.execute(
        _INSERT_LOT_MOVEMENTS,
        [
            {"transaction_id": txn_id, "lot_id": lot_id, "origin_partner_id": origin, "points": d}
            for lot_id, origin, d, _ in moves
        ],
    )


def _open_lots(
    session: Session,
    member_id: str,
    *,
    after: tuple[datetime, int] | None,
    expired_by: datetime | None,
    limit: int,
) -> Sequence[Row[int, str | None, int, datetime | None]]:
    stmt = (
        select(Lot.id, Lot.origin_partner_id, Lot.remaining, Lot.expires_at)
        .where(Lot.member_id == member_id, Lot.remaining > 0)
        .order_by(Lot.expires_at, Lot.id)
        .limit(limit)
    )
    if expired_by is not None:
        stmt = stmt.where(Lot.expires_at <= expired_by)
    if after is not None:
        expires, lot_id = after
        stmt = stmt.where(
            or_(Lot.expires_at > expires, and_(Lot.expires_at == expires, Lot.id > lot_id))
        )
    return session.execute(stmt).all()


def _take(
    session: Session,
    member_id: str,
    txn_id: str,
    points: int,
    *,
    first_lot_id: int | None = None,
    expired_by: datetime | None = None,
) -> int:
    """Take up to ``points`` from the member's open lots, soonest-expiring first.

    ``first_lot_id`` is drained before the others (an earn reversal takes back its own lot
    first). Returns the points taken; the caller decides what a shortfall means.
    """
    moves: list[tuple[int, str | None, int, int]] = []
    left = points
    if first_lot_id is not None:
        lot = session.execute(
            select(Lot.origin_partner_id, Lot.remaining).where(Lot.id == first_lot_id)
        ).one()
        if lot.remaining > 0:
            taken = min(lot.remaining, left)
            moves.append((first_lot_id, lot.origin_partner_id, -taken, lot.remaining - taken))
            left -= taken
    after: tuple[datetime, int] | None = None
    limit = LOT_FIRST_PAGE
    while left > 0:
        page = _open_lots(session, member_id, after=after, expired_by=expired_by, limit=limit)
        for lot_id, origin, remaining, _expires in page:
            if lot_id == first_lot_id:
                continue
            taken = min(remaining, left)
            moves.append((lot_id, origin, -taken, remaining - taken))
            left -= taken
            if left == 0:
                break
        if len(page) < limit:
            break
        last = page[-1]
        invariant(last.expires_at is not None, f"lot {last.id} has no expiry")
        after = (last.expires_at, last.id)
        limit = LOT_PAGE
    _move(session, txn_id, moves)
    return points - left


def _deepen_deficit(session: Session, member_id: str, txn_id: str, points: int) -> None:
    """Record ``points`` the member owes beyond its lots (a clawback), in its deficit lot."""
    invariant(points > 0, f"a deficit deepens by a positive number of points, not {points}")
    deficit = session.execute(
        select(Lot.id, Lot.remaining).where(Lot.member_id == member_id, Lot.is_deficit)
    ).one_or_none()
    if deficit is None:
        lot_id = session.scalar(
            insert(Lot)
            .values(
                member_id=member_id,
                origin_partner_id=None,
                transaction_id=txn_id,
                points=0,
                remaining=-points,
                expires_at=None,
                is_deficit=True,
            )
            .returning(Lot.id)
        )
        invariant(lot_id is not None, "the new lot has an id")
        session.execute(
            insert(LotMovement).values(
                transaction_id=txn_id, lot_id=lot_id, origin_partner_id=None, points=-points
            )
        )
    else:
        _move(session, txn_id, [(deficit.id, None, -points, deficit.remaining - points)])


def _fill_deficit(session: Session, member_id: str, txn_id: str) -> None:
    """Net the member's deficit against its open lots, so the two never stand side by side."""
    deficit = session.execute(
        select(Lot.id, Lot.remaining).where(
            Lot.member_id == member_id, Lot.is_deficit, Lot.remaining < 0
        )
    ).one_or_none()
    if deficit is None:
        return
    filled = _take(session, member_id, txn_id, -deficit.remaining)
    if filled:
        _move(session, txn_id, [(deficit.id, None, filled, deficit.remaining + filled)])


def _add_lot(
    session: Session,
    *,
    member_id: str,
    txn_id: str,
    points: int,
    origin_partner_id: str | None,
    expires_at: datetime,
) -> None:
    session.execute(
        _INSERT_LOT,
        {
            "member_id": member_id,
            "origin_partner_id": origin_partner_id,
            "transaction_id": txn_id,
            "points": points,
            "remaining": points,
            "expires_at": expires_at,
            "is_deficit": False,
        },
    )


_LOT_COLUMNS = (
    "member_id",
    "origin_partner_id",
    "transaction_id",
    "points",
    "remaining",
    "expires_at",
    "is_deficit",
)
