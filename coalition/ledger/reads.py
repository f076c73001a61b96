"""Reads of a member: its balance and held points, its snapshot and expiring points, what is
due; the types the ledger's operations return."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    Engine,
    bindparam,
    func,
    select,
    text,
)
from sqlalchemy.orm import Session

from coalition.db import dialect_of
from coalition.errors import InvariantViolated, UnknownMember, invariant
from coalition.hot import HotStatement, Prelude, named_sql
from coalition.ledger.tables import (
    _HOLDS,
    _LOTS,
    _MEMBER_STATE,
    _MEMBERS,
)
from coalition.ledger.tiers import (
    TIER_POINTS,
    day_of,
    tier_params,
)
from coalition.models import (
    Hold,
    Transaction,
)

_DUE_LOTS = (
    select(func.count())
    .select_from(_LOTS)
    .where(
        _LOTS.c.member_id == bindparam("member"),
        _LOTS.c.remaining > 0,
        _LOTS.c.expires_at <= bindparam("now"),
    )
    .scalar_subquery()
)
_DUE_HOLDS = (
    select(func.count())
    .select_from(_HOLDS)
    .where(
        _HOLDS.c.member_id == bindparam("member"),
        _HOLDS.c.status == "active",
        _HOLDS.c.expires_at <= bindparam("now"),
    )
    .scalar_subquery()
)
_MEMBER_DUE = select(_DUE_LOTS, _DUE_HOLDS).where(_MEMBERS.c.id == bindparam("member"))
#: :func:`member_due` as two scalar subqueries (``:member``, ``:now``), for an operation to
#: read along with what else it needs: both NULL when there is no such member.
MEMBER_DUE_LOTS = select(_DUE_LOTS).where(_MEMBERS.c.id == bindparam("member")).scalar_subquery()
MEMBER_DUE_HOLDS = select(_DUE_HOLDS).where(_MEMBERS.c.id == bindparam("member")).scalar_subquery()


@dataclass(frozen=True, slots=True)
class MemberState:
    """A member's balance after an operation."""

    member_id: str
    balance: int
    held: int

    @property
    def available(self) -> int:
        """Points the member may spend now: balance less held."""
        return self.balance - self.held


@dataclass(frozen=True, slots=True)
class Posted:
    """What a ledger operation returns: the transaction and the member's balance after it."""

    transaction: Transaction
    member: MemberState


@dataclass(frozen=True, slots=True)
class HoldPosted:
    """What a hold's placing or closing returns: the hold and the member's balance after it."""

    hold: Hold
    member: MemberState


def member_state(session: Session, member_id: str) -> MemberState:
    """The member's balance and held points; :class:`UnknownMember` if there is no such member."""
    row = session.execute(_MEMBER_STATE, {"member": member_id}).one_or_none()
    if row is None:
        raise UnknownMember(f"no member {member_id!r}", member_id=member_id)
    return MemberState(member_id, row.balance, row.held)


def member_due(session: Session, member_id: str, now: datetime) -> tuple[int, int]:
    """(lots, active holds) of the member past their expiry at ``now``: what must be expired or
    released before it spends again. :class:`UnknownMember` if there is no such member; one
    statement for both, so a burn or hold checks the member and its due work at once.
    """
    row = session.execute(_MEMBER_DUE, {"member": member_id, "now": now}).one_or_none()
    if row is None:
        raise UnknownMember(f"no member {member_id!r}", member_id=member_id)
    return int(row[0]), int(row[1])


_EXPIRING_LOTS = HotStatement(
    select(func.sum(_LOTS.c.remaining).label("points"), _LOTS.c.expires_at)
    .where(
        _LOTS.c.member_id == bindparam("member"),
        _LOTS.c.remaining > 0,
        _LOTS.c.expires_at > bindparam("after"),
    )
    .group_by(_LOTS.c.expires_at)
    .order_by(_LOTS.c.expires_at)
    .limit(bindparam("limit"))
)
_OVERDUE_POINTS = (
    select(func.coalesce(func.sum(_LOTS.c.remaining), 0))
    .where(
        _LOTS.c.member_id == bindparam("member"),
        _LOTS.c.remaining > 0,
        _LOTS.c.expires_at <= bindparam("now"),
    )
    .scalar_subquery()
)
_OVERDUE_HELD = (
    select(func.coalesce(func.sum(_HOLDS.c.points), 0))
    .where(
        _HOLDS.c.member_id == bindparam("member"),
        _HOLDS.c.status == "active",
        _HOLDS.c.expires_at <= bindparam("now"),
    )
    .scalar_subquery()
)
_MEMBER_SNAPSHOT = HotStatement(
    select(
        _MEMBERS.c.balance,
        _MEMBERS.c.held,
        TIER_POINTS,
        _OVERDUE_POINTS,
        _OVERDUE_HELD,
    ).where(_MEMBERS.c.id == bindparam("member"))
)


@dataclass(frozen=True, slots=True)
class MemberSnapshot:
    """A member as a balance read shows it: its row, its tier basis and its overdue work."""

    state: MemberState
    qualifying_points: int
    overdue_points: int
    overdue_held: int


def member_snapshot(
    session: Session, member_id: str, *, window_days: int, now: datetime
) -> MemberSnapshot:
    """The member's balance and held points, its qualifying points of the tier window of
    ``now``'s day (``window_days`` days, ``coalition.ledger.tiers``), and its points in lots
    and active holds past their expiry (what the jobs, or its next burn or hold, will expire
    and release), in one statement; :class:`UnknownMember` if there is no such member."""
    row = _MEMBER_SNAPSHOT.first(
        session, {"member": member_id, **tier_params(day_of(now), window_days), "now": now}
    )
    if row is None:
        raise UnknownMember(f"no member {member_id!r}", member_id=member_id)
    return MemberSnapshot(
        MemberState(member_id, row[0], row[1]), int(row[2] or 0), int(row[3]), int(row[4])
    )


#: The dates :func:`expiring_lots` lists at most.
EXPIRING_DATES = 12


def expiring_lots(
    session: Session, member_id: str, after: datetime, limit: int = EXPIRING_DATES
) -> list[tuple[int, datetime]]:
    """The member's open points expiring after ``after``, by date, soonest first:
    ``[(points, expires_at)]``."""
    rows = _EXPIRING_LOTS.rows(session, {"member": member_id, "after": after, "limit": limit})
    return _expiring(rows)


def _expiring(rows: Iterable[Sequence[Any]]) -> list[tuple[int, datetime]]:
    return [
        (int(points), expires_at.astimezone(UTC))  # UTC also from the driver (HotStatement)
        for points, expires_at in rows
        if expires_at is not None
    ]


@cache
def _balance_read(prelude_sql: str | None) -> tuple[HotStatement, dict[str, Any]]:
    """:data:`_MEMBER_SNAPSHOT` and :data:`_EXPIRING_LOTS` in one statement (the dates as two
    arrays), after a prelude's write, and the values both bind themselves; a row also when
    there is no such member (its columns NULL), so the prelude's count always comes back."""
    snapshot, fixed = named_sql(_MEMBER_SNAPSHOT.statement)
    expiring, fixed_too = named_sql(_EXPIRING_LOTS.statement)
    invariant(all(fixed[k] == v for k, v in fixed_too.items() if k in fixed), "bind names clash")
    written = "0"
    head = ""
    if prelude_sql is not None:
        head, written = f"WITH written AS ({prelude_sql}) ", "(SELECT count(*) FROM written)"
    sql = (
        f"{head}SELECT {written} AS written, s.*, e.points, e.expires_at"  # noqa: S608 (built from constants)
        f" FROM (SELECT 1) AS one LEFT JOIN ({snapshot}) AS s ON true"
        " CROSS JOIN (SELECT array_agg(x.points ORDER BY x.expires_at) AS points,"
        " array_agg(x.expires_at ORDER BY x.expires_at) AS expires_at"
        f" FROM ({expiring}) AS x) AS e"
    )
    return HotStatement(text(sql)), {**fixed, **fixed_too}


def balance_read(
    on: Session | Engine,
    member_id: str,
    *,
    window_days: int,
    now: datetime,
    prelude: Prelude | None = None,
) -> tuple[MemberSnapshot, list[tuple[int, datetime]]]:
    """What a balance read shows: the :func:`member_snapshot` and the :func:`expiring_lots`
    after ``now``, after the ``prelude``'s write (the request's nonce, which it settles first:
    a replay is refused before the member is looked for). On PostgreSQL one statement: in the
    session's transaction, or given the engine, as a transaction of its own
    (:meth:`~coalition.hot.HotStatement.alone`; for an unknown member the prelude's write is
    then taken back, as the transaction's rollback does)."""
    session = on if isinstance(on, Session) else None
    if session is not None and dialect_of(session) != "postgresql":
        if prelude is not None:
            prelude.alone(session)
        snapshot = member_snapshot(session, member_id, window_days=window_days, now=now)
        return snapshot, expiring_lots(session, member_id, after=now)
    statement, fixed = _balance_read(prelude.sql if prelude is not None else None)
    params = {
        "member": member_id,
        **tier_params(day_of(now), window_days),
        "now": now,
        "after": now,
        "limit": EXPIRING_DATES,
        **fixed,
    }
    if prelude is not None:
        invariant(not prelude.params.keys() & params.keys(), "a prelude's parameter clashes")
        params.update(prelude.params)
    if session is not None:
        row = statement.first(session, params)
    else:
        invariant(prelude is None or prelude.undo is not None, "a prelude alone can be undone")
        rows = statement.alone(cast("Engine", on), params)
        row = rows[0] if rows else None
    if row is None:
        raise InvariantViolated("a balance read returns a row")
    if prelude is not None:
        prelude.settle(session, int(row[0]))
    written, balance, held, qualifying, overdue_points, overdue_held, points, dates = row
    if balance is None:
        if session is None and prelude is not None and prelude.undo is not None and written:
            prelude.undo.alone(cast("Engine", on), prelude.params)
        raise UnknownMember(f"no member {member_id!r}", member_id=member_id)
    state = MemberState(member_id, balance, held)
    snapshot = MemberSnapshot(state, int(qualifying or 0), int(overdue_points), int(overdue_held))
    return snapshot, _expiring(zip(points or (), dates or (), strict=True))
