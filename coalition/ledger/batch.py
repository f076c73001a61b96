"""The one write path: :func:`post` posts a batch of movements (credits and debits), one or
thousands, with every rule of the ledger written once.

The members' rows are locked in id order (:func:`~coalition.ledger.post.lock_members`), and
everything that follows from them is computed here in Python, movement by movement in the
batch's order: each transfer's accounts and ``balance_after``, the available balance a debit
needs, an earn reversal's overdraft, the held points, the tier basis
(:class:`~coalition.ledger.tiers.BatchTiers`). Then the writes, set-based: the transfers in
one bulk insert (``COPY`` on PostgreSQL), the new lots in bulk, each debit's lots taken
soonest-expiring first by the one statement of that rule (``lots._take``), a clawback deficit
deepened or filled where a movement makes or finds one, the member rows in one update, the
events by ``post._posted_many``. A batch leaves exactly what its movements posted one at a time
leave (``tests/partners/test_ledger_properties.py``).

A batch of one on PostgreSQL tries its one-statement form first (``coalition.ledger.shortcuts``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

from sqlalchemy import text
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
    _TRANSACTION_COLUMNS,
    Credit,
    Header,
    LockedMember,
    Movement,
    _between,
    _header_values,
    _insert_rows,
    _posted_many,
    lock_members,
)
from coalition.ledger.reads import MemberState, Posted, member_state
from coalition.ledger.shortcuts import shortcut
from coalition.ledger.tables import _LOTS, _TRANSACTIONS, BULK_MAX
from coalition.ledger.tiers import BatchTiers, TierBasis, day_of, tier_points_of


def post(
    session: Session,
    movements: Sequence[Movement],
    members: Mapping[str, LockedMember] | None = None,
    tiers: Mapping[str, TierBasis] | None = None,
) -> list[Posted]:
    """Post ``movements`` in order, in the caller's transaction: what each one posted
    (:class:`Posted`, in their order). :class:`UnknownMember` or, for a debit that may not
    overdraw, :class:`InsufficientPoints` before anything is written.

    ``members``: :func:`lock_members` of every member moved, when the caller has them (read
    in this transaction); ``tiers``: each member's tier basis after the batch, when the caller
    computed it (a bulk earn, which needs each item's tier as it goes).
    """
    invariant(len(movements) <= BULK_MAX, f"{len(movements)} movements in one batch")
    if not movements:
        return []
    if members is None:
        if len(movements) == 1 and dialect_of(session) == "postgresql":
            posted, members = shortcut(session, movements[0])
            if posted is not None:
                return [posted]
        if members is None:
            members = lock_members(session, (m.member_id for m in movements))
    for member_id in {m.member_id for m in movements} - members.keys():
        member_state(session, member_id)  # raises UnknownMember
    headers = _headers(movements, members)
    if tiers is None:
        tiers = _batch_tiers(session, movements, members)
    return _write(session, movements, headers, members, tiers)


def _headers(
    movements: Sequence[Movement], members: Mapping[str, LockedMember]
) -> list[tuple[Header, int, int]]:
    """Each movement's header as written (its accounts, an overdraft), its member's balance
    and held points after it; :class:`InsufficientPoints` for a debit the member cannot
    cover."""
    balances = {m.member_id: members[m.member_id].state.balance for m in movements}
    held = {m.member_id: members[m.member_id].state.held for m in movements}
    out = []
    for m in movements:
        member, account = m.member_id, members[m.member_id].account_id
        before, available = balances[member], balances[member] - held[member]
        if isinstance(m, Credit):
            header = _between(m.header, account, m.from_account, to_member=True)
            balances[member] = before + m.points
        else:
            if not m.overdraw and available < m.points:
                raise InsufficientPoints(
                    f"member has {available} points available, {m.points} needed",
                    available=available,
                    requested=m.points,
                )
            header = _between(m.header, account, m.to_account, to_member=False)
            if m.records_overdraft:
                overdraft = m.points - min(max(available, 0), m.points)
                header = replace(header, overdraft_points=overdraft)
            balances[member] = before - m.points
            held[member] += m.held_delta
        out.append((header, balances[member], held[member]))
    return out


def _batch_tiers(
    session: Session, movements: Sequence[Movement], members: Mapping[str, LockedMember]
) -> dict[str, TierBasis]:
    """Each member's tier basis after the batch's movements that count in it."""
    counted = [
        (m, day_of(m.header.occurred_at), signed)
        for m in movements
        if (signed := tier_points_of(m.header.kind, m.points))
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
    headers: Sequence[tuple[Header, int, int]],
    members: Mapping[str, LockedMember],
    tiers: Mapping[str, TierBasis],
) -> list[Posted]:
    """:func:`post`'s writes: the transfers in bulk, then the lots movement by movement (new
    lots gathered into bulk inserts until a movement reads the lots), the member rows."""
    rows = [(*_header_values(header), balance) for header, balance, _ in headers]
    _insert_rows(session, _TRANSACTIONS, _TRANSACTION_COLUMNS, rows)
    new_lots: list[tuple[Any, ...]] = []

    def flush() -> None:
        if new_lots:
            _insert_rows(session, _LOTS, _LOT_COLUMNS, new_lots)
            new_lots.clear()

    for m, (header, balance, _) in zip(movements, headers, strict=True):
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
    _change_members(session, headers, members, tiers)
    return [
        Posted(txn, MemberState(txn.member_id, balance, held))
        for txn, (_, balance, held) in zip(
            _posted_many(session, [(header, balance) for header, balance, _ in headers]),
            headers,
            strict=True,
        )
    ]


def _change_members(
    session: Session,
    headers: Sequence[tuple[Header, int, int]],
    members: Mapping[str, LockedMember],
    tiers: Mapping[str, TierBasis],
) -> None:
    """Set the members' balances, held points and tier bases after the batch (one statement
    on PostgreSQL), as deltas of what was locked."""
    after = {header.member_id: (balance, held) for header, balance, held in headers}
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
