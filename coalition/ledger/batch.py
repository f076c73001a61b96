"""The one write path: :func:`post` posts a batch of movements (credits and debits, holds
placed and closed), one or thousands, with every rule of the ledger written once.

The members' rows are locked in id order (:func:`~coalition.ledger.post.lock_members`), and
everything that follows from them is computed here in Python, movement by movement in the
batch's order: each transfer's accounts and ``balance_after``, the available balance a debit
or a hold needs, an earn reversal's overdraft, the held points, the tier basis
(:class:`~coalition.ledger.tiers.BatchTiers`). Then the writes, set-based: the transfers in
one bulk insert (``COPY`` on PostgreSQL), the new lots in bulk, each debit's lots taken
soonest-expiring first by the one statement of that rule (``lots._take``), a clawback deficit
deepened or filled where a movement makes or finds one, the holds placed in bulk and closed in
one statement, the member rows in one update; then the listeners hear of the transfers
(``post._posted_many``) and of the holds closed (``post._holds_closed``). A batch leaves
exactly what its movements posted one at a time leave
(``tests/partners/test_ledger_properties.py``).

A batch of one on PostgreSQL tries its one-statement form first (``coalition.ledger.shortcuts``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, cast, overload

from sqlalchemy import CursorResult, bindparam, text, update
from sqlalchemy.orm import Session

from coalition.db import dialect_of
from coalition.errors import InsufficientPoints, invariant
from coalition.ledger.lots import (
    _LOT_COLUMNS,
    _deepen_deficit,
    _fill_deficit,
    _restore,
    _take,
)
from coalition.ledger.post import (
    _HOLD_COLUMNS,
    _TRANSACTION_COLUMNS,
    CloseHold,
    Credit,
    Debit,
    Header,
    HoldMovement,
    LockedMember,
    Movement,
    PlaceHold,
    Transfer,
    _between,
    _header_values,
    _holds_closed,
    _insert_rows,
    _posted_many,
    lock_members,
)
from coalition.ledger.reads import HoldPosted, MemberState, Posted, member_state
from coalition.ledger.shortcuts import shortcut
from coalition.ledger.tables import _HOLDS, _LOTS, _TRANSACTIONS, BULK_MAX
from coalition.ledger.tiers import BatchTiers, TierBasis, day_of, tier_points_of

#: What a movement leaves: its transfer's header as written (``None``: a hold's movement),
#: its member's balance and held points after it.
_Effect = tuple[Header | None, int, int]


@overload
def post(
    session: Session,
    movements: Sequence[Transfer],
    members: Mapping[str, LockedMember] | None = None,
    tiers: Mapping[str, TierBasis] | None = None,
) -> list[Posted]: ...
@overload
def post(
    session: Session,
    movements: Sequence[HoldMovement],
    members: Mapping[str, LockedMember] | None = None,
    tiers: Mapping[str, TierBasis] | None = None,
) -> list[HoldPosted]: ...
@overload
def post(
    session: Session,
    movements: Sequence[Movement],
    members: Mapping[str, LockedMember] | None = None,
    tiers: Mapping[str, TierBasis] | None = None,
) -> list[Posted | HoldPosted]: ...
def post(
    session: Session,
    movements: Sequence[Movement],
    members: Mapping[str, LockedMember] | None = None,
    tiers: Mapping[str, TierBasis] | None = None,
) -> Sequence[Posted | HoldPosted]:
    """Post ``movements`` in order, in the caller's transaction: what each one posted (in
    their order: :class:`Posted` of a transfer, :class:`HoldPosted` of a hold's movement).
    :class:`UnknownMember` or, for a debit that may not overdraw or a hold placed,
    :class:`InsufficientPoints` before anything is written.

    ``members``: :func:`lock_members` of every member moved, when the caller has them (read
    in this transaction); ``tiers``: each member's tier basis after the batch, when the caller
    computed it (a bulk earn, which needs each item's tier as it goes).
    """
    invariant(len(movements) <= BULK_MAX, f"{len(movements)} movements in one batch")
    if not movements:
        return []
    if members is None:
        if len(movements) == 1 and dialect_of(session) == "postgresql":
            done, members = shortcut(session, movements[0])
            if done is not None:
                return [done]
        if members is None:
            members = lock_members(session, (m.member_id for m in movements))
    for member_id in {m.member_id for m in movements} - members.keys():
        member_state(session, member_id)  # raises UnknownMember
    effects = _effects(movements, members)
    if tiers is None:
        tiers = _batch_tiers(session, movements, members)
    return _write(session, movements, effects, members, tiers)


def _effects(movements: Sequence[Movement], members: Mapping[str, LockedMember]) -> list[_Effect]:
    """What each movement leaves (:data:`_Effect`: its header as written, with its accounts
    and an overdraft); :class:`InsufficientPoints` for a debit or a hold the member cannot
    cover."""
    balances = {m.member_id: members[m.member_id].state.balance for m in movements}
    held = {m.member_id: members[m.member_id].state.held for m in movements}
    out: list[_Effect] = []
    for m in movements:
        member, account = m.member_id, members[m.member_id].account_id
        before, available = balances[member], balances[member] - held[member]
        header = None
        if isinstance(m, Credit):
            header = _between(m.header, account, m.from_account, to_member=True)
            balances[member] = before + m.points
        elif isinstance(m, Debit):
            if not m.overdraw:
                _require_available(available, m.points)
            header = _between(m.header, account, m.to_account, to_member=False)
            if m.records_overdraft:
                overdraft = m.points - min(max(available, 0), m.points)
                header = replace(header, overdraft_points=overdraft)
            balances[member] = before - m.points
        elif isinstance(m, PlaceHold):
            invariant(m.points > 0, f"a hold of {m.points} points")
            _require_available(available, m.points)
            held[member] += m.points
        else:
            held[member] -= m.hold.points
        out.append((header, balances[member], held[member]))
    return out


def _require_available(available: int, points: int) -> None:
    """:class:`InsufficientPoints` unless the member has ``points`` available."""
    if available < points:
        raise InsufficientPoints(
            f"member has {available} points available, {points} needed",
            available=available,
            requested=points,
        )


def _batch_tiers(
    session: Session, movements: Sequence[Movement], members: Mapping[str, LockedMember]
) -> dict[str, TierBasis]:
    """Each member's tier basis after the batch's movements that count in it."""
    counted = [
        (m, day_of(m.header.occurred_at), signed)
        for m in movements
        if isinstance(m, Credit | Debit) and (signed := tier_points_of(m.header.kind, m.points))
    ]
    if not counted:
        return {}
    windows = {m.tier_window_days for m, _, _ in counted}
    window = next(iter(windows))
    invariant(len(windows) == 1 and window is not None and window > 0, "one tier window")
    batch = BatchTiers(
        session,
        {m.member_id: members[m.member_id].tier for m, _, _ in counted},
        cast("int", window),
        [(m.member_id, day) for m, day, _ in counted],
    )
    for m, day, signed in counted:
        batch.add(m.member_id, day, signed)
    return batch.bases


def _write(
    session: Session,
    movements: Sequence[Movement],
    effects: Sequence[_Effect],
    members: Mapping[str, LockedMember],
    tiers: Mapping[str, TierBasis],
) -> list[Posted | HoldPosted]:
    """:func:`post`'s writes: the transfers in bulk, then the lots movement by movement (new
    lots gathered into bulk inserts until a movement reads the lots), the holds placed and
    closed, the member rows; then the listeners hear of them (the transfers first)."""
    posted = [(header, balance) for header, balance, _ in effects if header is not None]
    if posted:
        rows = [(*_header_values(header), balance) for header, balance in posted]
        _insert_rows(session, _TRANSACTIONS, _TRANSACTION_COLUMNS, rows)
    _write_lots(session, movements, effects)
    places = [m.row() for m in movements if isinstance(m, PlaceHold)]
    if places:
        _insert_rows(session, _HOLDS, _HOLD_COLUMNS, places)
    closes = [m for m in movements if isinstance(m, CloseHold)]
    if closes:
        _close_holds(session, closes)
    _change_members(session, movements, effects, members, tiers)
    txns = iter(_posted_many(session, posted))
    _holds_closed(session, closes)
    out: list[Posted | HoldPosted] = []
    for m, (_, balance, held) in zip(movements, effects, strict=True):
        state = MemberState(m.member_id, balance, held)
        if isinstance(m, PlaceHold):
            out.append(HoldPosted(m.hold(), state))
        elif isinstance(m, CloseHold):
            out.append(HoldPosted(m.closed(), state))
        else:
            out.append(Posted(next(txns), state))
    return out


def _write_lots(
    session: Session, movements: Sequence[Movement], effects: Sequence[_Effect]
) -> None:
    """Each transfer's lots: a credit's new lot (gathered into bulk inserts until a movement
    reads the lots) or the lots it restores, a deficit it fills; a debit's lots taken
    soonest-expiring first, a deficit it deepens."""
    new_lots: list[tuple[Any, ...]] = []

    def flush() -> None:
        if new_lots:
            _insert_rows(session, _LOTS, _LOT_COLUMNS, new_lots)
            new_lots.clear()

    for m, (header, balance, _) in zip(movements, effects, strict=True):
        if header is None or not isinstance(m, Credit | Debit):
            continue
        member = m.member_id
        if isinstance(m, Credit):
            points = m.points
            if m.restores is not None:
                flush()
                points -= _restore(session, header.id, m.restores, points)
            if points:
                lot = (member, m.origin_partner_id, header.id, points, points, m.expires_at, False)
                new_lots.append(lot)
            if balance - m.points < 0:  # it owed points: its deficit is filled first
                flush()
                _fill_deficit(session, member, header.id)
            continue
        flush()
        taken = _take(
            session,
            member,
            header.id,
            m.points,
            first_lot_id=m.first_lot_id,
            expired_by=m.expired_by,
        )
        if taken < m.points:
            # Only a debit that may overdraw reaches here: available >= points and balance =
            # sum(lots) mean the lots cover any other.
            invariant(m.overdraw, f"{header.id}: lots gave {taken} of {m.points}")
            _deepen_deficit(session, member, header.id, m.points - taken)
    flush()


def _close_holds(session: Session, closes: Sequence[CloseHold]) -> None:
    """Close the holds (each must still be ``active``): one statement on PostgreSQL."""
    params = [
        {"hold": c.hold.id, "status": c.status.value, "at": c.at, "captured": c.captured_points}
        for c in closes
    ]
    if dialect_of(session) == "postgresql":
        arrays = {k: [p[k] for p in params] for k in ("hold", "status", "at", "captured")}
        closed = cast("CursorResult[Any]", session.execute(_CLOSE_HOLDS, arrays)).rowcount
    else:
        closed = sum(
            cast("CursorResult[Any]", session.execute(_CLOSE_ONE_HOLD, p)).rowcount for p in params
        )
    invariant(closed == len(closes), f"{len(closes) - closed} of the holds closed were not active")


_CLOSE_HOLDS = text(
    """
    UPDATE holds SET status = d.status, closed_at = d.at, captured_points = d.captured
    FROM unnest(CAST(:hold AS VARCHAR[]), CAST(:status AS VARCHAR[]),
        CAST(:at AS TIMESTAMPTZ[]), CAST(:captured AS BIGINT[])) AS d(id, status, at, captured)
    WHERE holds.id = d.id AND holds.status = 'active'
    """
)
_CLOSE_ONE_HOLD = (
    update(_HOLDS)
    .where(_HOLDS.c.id == bindparam("hold"), _HOLDS.c.status == "active")
    .values(
        status=bindparam("status"), closed_at=bindparam("at"), captured_points=bindparam("captured")
    )
)


def _change_members(
    session: Session,
    movements: Sequence[Movement],
    effects: Sequence[_Effect],
    members: Mapping[str, LockedMember],
    tiers: Mapping[str, TierBasis],
) -> None:
    """Set the members' balances, held points and tier bases after the batch (one statement
    on PostgreSQL), as deltas of what was locked."""
    after = {
        m.member_id: (balance, held)
        for m, (_, balance, held) in zip(movements, effects, strict=True)
    }
    changes = []
    for m, (balance, held) in sorted(after.items()):
        locked = members[m]
        tier = tiers.get(m, locked.tier)
        changes.append(
            {
                "member": m,
                "delta": balance - locked.state.balance,
                "held_delta": held - locked.state.held,
                "tier_day": tier.day,
                "tier_since_day": tier.since_day,
                "tier_points": tier.points,
            }
        )
    if dialect_of(session) == "postgresql":
        session.execute(
            _CHANGE_MEMBERS, {k: [c[k] for c in changes] for k in _CHANGE_MEMBERS_ARRAYS}
        )
    else:
        session.execute(_CHANGE_ONE_MEMBER, changes)


# The members' new balances, held points and tier bases in one statement on PostgreSQL.
_CHANGE_MEMBERS_ARRAYS = (
    "member",
    "delta",
    "held_delta",
    "tier_day",
    "tier_since_day",
    "tier_points",
)
_CHANGE_MEMBERS = text(
    """
    UPDATE members SET balance = members.balance + d.delta, held = members.held + d.held_delta,
        tier_day = d.tier_day, tier_since_day = d.tier_since_day, tier_points = d.tier_points
    FROM unnest(CAST(:member AS VARCHAR[]), CAST(:delta AS BIGINT[]),
        CAST(:held_delta AS BIGINT[]), CAST(:tier_day AS INTEGER[]),
        CAST(:tier_since_day AS INTEGER[]), CAST(:tier_points AS BIGINT[]))
        AS d(id, delta, held_delta, tier_day, tier_since_day, tier_points)
    WHERE members.id = d.id
    """
)
_CHANGE_ONE_MEMBER = text(
    """
    UPDATE members SET balance = balance + :delta, held = held + :held_delta,
        tier_day = :tier_day, tier_since_day = :tier_since_day, tier_points = :tier_points
    WHERE id = :member
    """
)
