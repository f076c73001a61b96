"""Lots: the points a member received together; taken soonest-expiring first, a clawback's
deficit, and the movements that record every change."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import (
    Table,
    bindparam,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from coalition.db import UTCDateTime, dialect_of
from coalition.errors import invariant
from coalition.hot import HotStatement
from coalition.ledger.tables import (
    _LOTS,
    _TRANSACTIONS,
)
from coalition.models import (
    Lot,
    LotMovement,
)

_UPDATE_LOT = update(_LOTS).where(_LOTS.c.id == bindparam("lot")).values(remaining=bindparam("to"))
_INSERT_LOT_MOVEMENTS = insert(cast("Table", LotMovement.__table__))

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


# Soonest-expiring first, the one statement of the rule (both dialects): the member's open
# lots in the order they are taken (``:first_lot`` first: an earn reversal's own lot; only
# those expired by ``:expired_by`` if given, the expiry job), each with the points before it
# (a running sum), and what the debit of ``:points`` takes from each.
_TAKEN = """
    WITH open AS (
        SELECT id, origin_partner_id, remaining,
            SUM(remaining) OVER (ORDER BY CASE WHEN id = :first_lot THEN 0 ELSE 1 END,
                expires_at, id) - remaining AS before
        FROM lots
        WHERE member_id = :member_id AND remaining > 0
            AND (:expired_by IS NULL OR expires_at <= :expired_by)
    ), taken AS (
        SELECT id, origin_partner_id, remaining, before,
            CASE WHEN remaining < :points - before THEN remaining ELSE :points - before END
                AS take
        FROM open WHERE before < :points
    )"""
# On SQLite the lots taken are read, and written by :func:`_move`.
# ``:expired_by`` typed: SQLite compares the text it stores, PostgreSQL is told its type.
_EXPIRED_BY = bindparam("expired_by", type_=UTCDateTime())
_TAKE_READ = text(
    f"{_TAKEN} SELECT id, origin_partner_id, take, remaining - take FROM taken"  # noqa: S608 (constants)
    " ORDER BY before"
).bindparams(_EXPIRED_BY)
# On PostgreSQL in the same statement: each lot's new remaining and its movement.
_TAKE_WRITE = HotStatement(
    text(
        f"""{_TAKEN}, u AS (
        UPDATE lots SET remaining = lots.remaining - taken.take
        FROM taken WHERE lots.id = taken.id
    ), mv AS (
        INSERT INTO lot_movements (transaction_id, lot_id, origin_partner_id, points)
        SELECT :txn_id, id, origin_partner_id, -take FROM taken
    )
    SELECT COALESCE(SUM(take), 0) FROM taken
    """  # noqa: S608 (built from constants)
    ).bindparams(_EXPIRED_BY)
)


def _take(
    session: Session,
    member_id: str,
    txn_id: str,
    points: int,
    *,
    first_lot_id: int | None = None,
    expired_by: datetime | None = None,
) -> int:
    """Take up to ``points`` from the member's open lots, soonest-expiring first, recording
    each lot's movement (:data:`_TAKEN`, the rule in one statement on either dialect).

    ``first_lot_id`` is drained before the others (an earn reversal takes back its own lot
    first); with ``expired_by`` only lots expired by then are taken. Returns the points taken;
    the caller decides what a shortfall means. On PostgreSQL its snapshot must see every lot
    change committed before the member row lock was taken: the caller's earlier statement
    took the lock.
    """
    params = {
        "member_id": member_id,
        "points": points,
        "first_lot": first_lot_id,
        "expired_by": expired_by,
        "txn_id": txn_id,
    }
    if dialect_of(session) == "postgresql":
        ((taken,),) = _TAKE_WRITE.rows(session, params)
        return int(taken)
    rows = session.execute(_TAKE_READ, params).all()
    _move(session, txn_id, [(lot, origin, -take, left) for lot, origin, take, left in rows])
    return sum(int(take) for _, _, take, _ in rows)


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


_LOT_COLUMNS = (
    "member_id",
    "origin_partner_id",
    "transaction_id",
    "points",
    "remaining",
    "expires_at",
    "is_deficit",
)


def _restore(session: Session, txn_id: str, original_id: str, points: int) -> int:
    """Give back up to ``points`` to the lots a burn (``original_id``, with its earlier
    reversals) took them from, latest-expiring first, recording each lot's movement; the
    points given back. The deficit lot is never restored into: a later credit may have filled
    it."""
    related = select(_TRANSACTIONS.c.id).where(
        or_(_TRANSACTIONS.c.id == original_id, _TRANSACTIONS.c.reverses == original_id)
    )
    net_taken = (
        select(LotMovement.lot_id, func.sum(LotMovement.points).label("net"))
        .where(LotMovement.transaction_id.in_(related.scalar_subquery()))
        .group_by(LotMovement.lot_id)
        .subquery()
    )
    lots = session.execute(
        select(Lot.id, Lot.origin_partner_id, Lot.remaining, net_taken.c.net)
        .join(net_taken, net_taken.c.lot_id == Lot.id)
        .where(net_taken.c.net < 0, Lot.is_deficit.is_(False))
        .order_by(Lot.expires_at.desc(), Lot.id.desc())
    ).all()
    moves: list[tuple[int, str | None, int, int]] = []
    left = points
    for lot_id, origin, remaining, net in lots:
        if left == 0:
            break
        back = min(-int(net), left)
        moves.append((lot_id, origin, back, remaining + back))
        left -= back
    _move(session, txn_id, moves)
    return points - left
