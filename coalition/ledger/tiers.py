"""The tier basis, kept on the member row.

The rule (docs/recipes.md, "Tiers"): the tier of an earn on UTC day ``d`` rests on the
member's qualifying points (earns less earn reversals, ``kinds.TIER_SIGNS``) that occurred on
``d`` and the ``W - 1`` whole days before it (``W``: ``COALITION_TIER_WINDOW_DAYS``).

Each member row carries that sum for one window: ``tier_points``, the qualifying points of the
days ``tier_since_day`` to ``tier_day`` (UTC day numbers, days since 1970-01-01), where
``tier_day`` is the day of its latest qualifying transaction. The write that changes a
member's balance updates them in the same statement (no row of its own), and so a read of the
tier is one row:

- on ``tier_day`` itself: ``tier_points``;
- on a later day: ``tier_points`` less the member's qualifying transactions of the days that
  left the window (an index range of its own transactions by ``(member_id, occurred_at)``,
  usually a day or nothing), or nothing at all once ``W`` days or more have passed;
- on an earlier day (a backdated earn), or when the row's window is not ``W`` days wide (the
  setting changed since): the exact sum over the window, from the member's transactions.

The rule is declared once, as terms (``coalition.ledger.terms``: :data:`_POINTS_AT`, the
points of a day's window, and :data:`_AFTER`, the basis after a transfer), and evaluated both
ways from that one declaration: as SQL that a statement evaluates against the member row
(:data:`TIER_POINTS` and :data:`MEMBER_TIER_POINTS`, the earn's read; :func:`tier_values`, the
one-statement credit's update of ``coalition.ledger.shortcuts``; :data:`TIER_WRITE_WITHOUT_READ`,
when that update reads no transaction), and as Python over the rows ``ledger.post`` and the
bulk earn locked (:class:`TierBasis`, through :class:`BatchTiers`).
``tests/partners/test_tier_basis.py`` holds both to a recomputation from the transactions, and
``coalition check`` verifies every row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    bindparam,
    case,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from coalition.config import Tier
from coalition.db import dialect_of
from coalition.ledger.kinds import TIER_SIGNS
from coalition.ledger.tables import _MEMBERS, _TRANSACTIONS
from coalition.ledger.terms import (
    Env,
    Var,
    compile_py,
    points_of_days,
    ranges_read,
    reads_nothing,
    when,
)

#: What a transaction adds to its member's tier basis: its points with its kind's tier sign
#: (``kinds.TIER_SIGNS``: an earn plus, an earn reversal minus; other kinds are filtered out
#: by :data:`_COUNTS_FOR_TIER`).
_SIGNED_POINTS = case(
    *(
        (
            _TRANSACTIONS.c.kind == literal_column(f"'{kind}'"),
            literal_column(str(sign)) * _TRANSACTIONS.c.points,
        )
        for kind, sign in TIER_SIGNS.items()
    )
)
# The kinds are SQL literals, not an expanding parameter: SQLAlchemy renders an expanding
# ``IN`` again at every execution, which was a tenth of a signed earn's CPU.
_COUNTS_FOR_TIER = _TRANSACTIONS.c.kind.in_([literal_column(f"'{k}'") for k in TIER_SIGNS])
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY = timedelta(days=1)


def day_of(at: datetime) -> int:
    """The UTC day ``at`` falls on, in days since 1970-01-01."""
    return (at - _EPOCH) // _DAY


def day_start(day: int) -> datetime:
    """The first moment of a UTC day number."""
    return _EPOCH + day * _DAY


def tier_points_of(kind: str, points: int) -> int:
    """What a transfer of ``kind`` adds to its member's tier basis (0: nothing)."""
    return TIER_SIGNS.get(kind, 0) * points


class _day_start_sql(FunctionElement[datetime]):
    """The first moment of an SQL day number (days since 1970-01-01), comparable with a
    timestamp column: ``to_timestamp`` on PostgreSQL; on SQLite (naive UTC text) the day's
    ``YYYY-MM-DD HH:MM:SS``, which sorts before any stored time of that day."""

    type = DateTime(timezone=True)
    name = "day_start"
    inherit_cache = True


@compiles(_day_start_sql, "postgresql")
def _day_start_postgresql(element: _day_start_sql, compiler: SQLCompiler, **kw: Any) -> str:
    return f"to_timestamp(CAST({compiler.process(element.clauses, **kw)} AS BIGINT) * 86400)"


@compiles(_day_start_sql, "sqlite")
def _day_start_sqlite(element: _day_start_sql, compiler: SQLCompiler, **kw: Any) -> str:
    return f"datetime(({compiler.process(element.clauses, **kw)}) * 86400, 'unixepoch')"


def _sum_between(lo: Any, hi: Any) -> Any:
    """The member's (the enclosing statement's ``members`` row) qualifying points that occurred
    from ``lo`` (inclusive) to ``hi`` (exclusive): one index range of its transactions."""
    return func.coalesce(
        select(func.sum(_SIGNED_POINTS))
        .where(
            _TRANSACTIONS.c.member_id == _MEMBERS.c.id,
            _COUNTS_FOR_TIER,
            _TRANSACTIONS.c.occurred_at >= lo,
            _TRANSACTIONS.c.occurred_at < hi,
        )
        .scalar_subquery(),
        0,
    )


# --- the rule, declared once (coalition.ledger.terms: evaluated as SQL and as Python) -------

# The member row's basis (T, S, P), the day asked about or written on (d), the window (W) and
# what the write adds (signed): in SQL the row's columns and the bind parameters of
# :func:`tier_params`, in Python the items of :meth:`TierBasis._env`, then the days' points.
_T = Var("T", _MEMBERS.c.tier_day)
_S = Var("S", _MEMBERS.c.tier_since_day)
_P = Var("P", _MEMBERS.c.tier_points)
_D = Var("d", sa_cast(bindparam("tier_day"), Integer))
_W = Var("W", sa_cast(bindparam("tier_window"), Integer))
_SIGNED = Var("signed", sa_cast(bindparam("tier_signed"), BigInteger))
_VARIABLES = (_T, _S, _P, _D, _W, _SIGNED)

#: Nothing of the member's is in d's window (no qualifying transaction yet, or W days or more
#: since its latest).
_NONE_IN_WINDOW = _T.is_null() | (_D - _T >= _W)
#: The row's window is W days wide (else the setting changed since it was written).
_WIDE = (_T - _S + 1).eq(_W)
#: The row rolls forward to d.
_ROLLS = _T.is_null() | (_D > _T)

#: The qualifying points of d's window (before anything written on d): on the row's day its
#: points; on a later day its points less the days that left the window; else the exact sum.
_POINTS_AT = when(
    (_NONE_IN_WINDOW, 0),
    (_WIDE & _D.eq(_T), _P),
    (_WIDE & (_D > _T), _P - points_of_days(_S, _D - _W)),
    else_=points_of_days(_D - _W + 1, _D),
)
#: The row's basis after a transfer adding ``signed`` on d, relative to the row as it is (so
#: concurrent writers, each under the row lock, compose): rolled forward to d (d's window's
#: points and the transfer's), or kept, the points gaining the transfer's if d is inside it.
_AFTER = {
    "tier_day": when((_ROLLS, _D), else_=_T),
    "tier_since_day": when((_ROLLS, _D - _W + 1), (_WIDE, _S), else_=_T - _W + 1),
    "tier_points": when(
        (_NONE_IN_WINDOW, _SIGNED),
        (_WIDE & (_D <= _T), _P + when((_D >= _S, _SIGNED), else_=0)),
        (_D > _T, _POINTS_AT + _SIGNED),
        else_=points_of_days(_T - _W + 1, _T) + when((_D >= _T - _W + 1, _SIGNED), else_=0),
    ),
}


def _days_sql(first: Any, last: Any) -> Any:
    return _sum_between(_day_start_sql(first), _day_start_sql(last + 1))


def tier_params(day: int, window_days: int, signed: int = 0) -> dict[str, Any]:
    """The bind parameters of :data:`MEMBER_TIER_POINTS` and :func:`tier_values`: the day
    ``d`` asked about or written on, ``W``, and what the write adds (``signed``)."""
    return {"tier_day": day, "tier_window": window_days, "tier_signed": signed}


#: The member row's qualifying points of day ``d``'s window (before anything written on it),
#: as a column of a statement on ``members``.
TIER_POINTS = _POINTS_AT.sql(_days_sql)
#: :data:`TIER_POINTS` of ``:member`` as a scalar subquery (with :func:`tier_params`), for an
#: operation to read along with what else it needs: NULL when there is no such member.
MEMBER_TIER_POINTS = (
    select(TIER_POINTS).where(_MEMBERS.c.id == bindparam("member")).scalar_subquery()
)

#: True when :func:`tier_values` reads no transaction: what a statement that has not locked
#: the member row first may write (docs/invariants.md: a read of the leaving days must see
#: every transaction committed before the row lock was taken).
TIER_WRITE_WITHOUT_READ = reads_nothing(_AFTER["tier_points"], _days_sql)


def tier_values() -> dict[str, Any]:
    """The SET values of the member row's basis after a transfer that adds ``signed`` on day
    ``d`` (:func:`tier_params`)."""
    return {column: term.sql(_days_sql) for column, term in _AFTER.items()}


# The same terms as Python, for ledger.post and the bulk earn.
_AT_PY = compile_py([_POINTS_AT], _VARIABLES)
_AFTER_PY = compile_py(list(_AFTER.values()), _VARIABLES)
_READS_PY = compile_py([_POINTS_AT, _AFTER["tier_points"]], _VARIABLES)


@dataclass(frozen=True, slots=True)
class TierBasis:
    """A member row's tier basis (``day`` ``None``: no qualifying transaction yet), and the
    rule's terms evaluated on it in Python."""

    day: int | None = None
    since_day: int | None = None
    points: int = 0

    def _env(self, day: int, window_days: int, signed: int, days: Mapping[int, int]) -> Env:
        def sum_days(first: int, last: int) -> int:
            return _sum_days(days, first, last)

        return (self.day, self.since_day, self.points, day, window_days, signed, sum_days)

    def reads(self, day: int, window_days: int) -> list[tuple[int, int]]:
        """The ranges of days (inclusive) of the member's transactions that :meth:`at` and
        :meth:`after` on ``day`` read."""
        return ranges_read(_READS_PY, self._env(day, window_days, 0, {}))

    def at(self, day: int, window_days: int, days: Mapping[int, int]) -> int:
        """:data:`TIER_POINTS`: the qualifying points of ``day``'s window, ``days`` holding the
        member's qualifying points per day over :meth:`reads`."""
        return int(_AT_PY(self._env(day, window_days, 0, days))[0])

    def after(self, day: int, signed: int, window_days: int, days: Mapping[int, int]) -> TierBasis:
        """:func:`tier_values`: the basis after a transfer adding ``signed`` on ``day`` (``days``
        as for :meth:`at`, before it)."""
        tier_day, since_day, points = _AFTER_PY(self._env(day, window_days, signed, days))
        return TierBasis(tier_day, since_day, int(points))


class BatchTiers:
    """The tier basis of many members over a batch of their transfers, in Python, as posting
    them one by one would keep it (``ledger.post``, the bulk earn): the members' rows locked
    (:func:`~coalition.ledger.post.lock_members`), their transactions' days read once, set-based,
    over the ranges the batch will need (:meth:`TierBasis.reads`), and again, for one member,
    only if an item needs a range that was not foreseen."""

    def __init__(
        self,
        session: Session,
        bases: Mapping[str, TierBasis],
        window_days: int,
        planned: Iterable[tuple[str, int]],
    ) -> None:
        self._session = session
        self._w = window_days
        self.bases = dict(bases)
        self._old = {member: basis.day for member, basis in bases.items()}
        self._read: dict[str, tuple[int, int]] = {}
        self._days: dict[str, dict[int, int]] = {member: {} for member in bases}
        self._batch: dict[str, dict[int, int]] = {member: {} for member in bases}
        # Foreseen: each planned item posted, and each read against the rows as they are.
        wanted: dict[str, list[tuple[int, int]]] = {}
        walk = dict(self.bases)
        for member, day in planned:
            if member not in walk:
                continue
            for basis in (walk[member], self.bases[member]):
                wanted.setdefault(member, []).extend(basis.reads(day, window_days))
            walk[member] = walk[member].after(day, 1, window_days, {})
        self._fetch({m: r for m, ranges in wanted.items() if (r := self._clip(m, ranges))})

    def _clip(self, member: str, ranges: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
        """One range covering ``ranges`` on the days the member's rows can be on (to its
        basis's day, the latest before the batch)."""
        last = self._old.get(member)
        if last is None:
            return None
        ranges = [(lo, min(hi, last)) for lo, hi in ranges if lo <= min(hi, last)]
        if not ranges:
            return None
        return min(lo for lo, _ in ranges), max(hi for _, hi in ranges)

    def _fetch(self, ranges: Mapping[str, tuple[int, int]]) -> None:
        for member, days in day_sums(self._session, ranges).items():
            self._read[member] = ranges[member]
            self._days[member] = days

    def _days_for(self, member: str, ranges: Sequence[tuple[int, int]]) -> dict[int, int]:
        need = self._clip(member, ranges)
        have = self._read.get(member)
        if need is not None and (have is None or need[0] < have[0] or need[1] > have[1]):
            lo, hi = need if have is None else (min(need[0], have[0]), max(need[1], have[1]))
            self._fetch({member: (lo, hi)})
        days = dict(self._days[member])
        for day, points in self._batch[member].items():
            days[day] = days.get(day, 0) + points
        return days

    def at(self, member: str, day: int) -> int:
        """The member's qualifying points of ``day``'s window, the batch's earlier items in."""
        basis = self.bases[member]
        return basis.at(day, self._w, self._days_for(member, basis.reads(day, self._w)))

    def add(self, member: str, day: int, signed: int) -> None:
        """Count a transfer of the batch adding ``signed`` on ``day``."""
        if not signed:
            return
        basis = self.bases[member]
        days = self._days_for(member, basis.reads(day, self._w))
        self.bases[member] = basis.after(day, signed, self._w, days)
        self._batch[member][day] = self._batch[member].get(day, 0) + signed


def _sum_days(days: Mapping[int, int], first: int, last: int) -> int:
    return sum(points for day, points in days.items() if first <= day <= last)


# The members' qualifying points per day over a range each (the bulk earn's reads): one
# statement over arrays on PostgreSQL, one per member on SQLite.
_LITERAL = {"literal_binds": True}
_DAY_SUMS_PG = text(
    f"""
    SELECT r.member_id, transactions.occurred_at, {_SIGNED_POINTS.compile(compile_kwargs=_LITERAL)}
    FROM unnest(CAST(:members AS VARCHAR[]), CAST(:since AS TIMESTAMPTZ[]),
        CAST(:until AS TIMESTAMPTZ[])) AS r(member_id, since, until)
    JOIN transactions ON transactions.member_id = r.member_id
        AND transactions.occurred_at >= r.since AND transactions.occurred_at < r.until
    WHERE {_COUNTS_FOR_TIER.compile(compile_kwargs=_LITERAL)}
    """  # noqa: S608 (built from constants)
)
_DAY_SUMS_ONE = select(_TRANSACTIONS.c.occurred_at, _SIGNED_POINTS).where(
    _TRANSACTIONS.c.member_id == bindparam("member"),
    _COUNTS_FOR_TIER,
    _TRANSACTIONS.c.occurred_at >= bindparam("since"),
    _TRANSACTIONS.c.occurred_at < bindparam("until"),
)


def day_sums(session: Session, ranges: Mapping[str, tuple[int, int]]) -> dict[str, dict[int, int]]:
    """Each member's qualifying points per day over its range of days (inclusive)."""
    sums: dict[str, dict[int, int]] = {member: {} for member in ranges}
    wanted = sorted((m, day_start(lo), day_start(hi + 1)) for m, (lo, hi) in ranges.items())
    if not wanted:
        return sums
    rows: Iterable[Sequence[Any]]
    if dialect_of(session) == "postgresql":
        rows = session.execute(
            _DAY_SUMS_PG,
            {
                "members": [m for m, _, _ in wanted],
                "since": [s for _, s, _ in wanted],
                "until": [u for _, _, u in wanted],
            },
        ).all()
    else:
        rows = [
            (member, *row)
            for member, since, until in wanted
            for row in session.execute(
                _DAY_SUMS_ONE, {"member": member, "since": since, "until": until}
            )
        ]
    for member, occurred_at, points in rows:
        day = day_of(occurred_at)
        sums[member][day] = sums[member].get(day, 0) + int(points)
    return sums


def qualifying_points(session: Session, member_id: str, day: int, window_days: int) -> int:
    """A recomputation from the transactions: the member's qualifying points of the ``W``
    days ending with ``day`` (what its tier on ``day`` rests on)."""
    total = session.scalar(
        select(_sum_between(bindparam("since"), bindparam("until"))).where(
            _MEMBERS.c.id == member_id
        ),
        {"since": day_start(day - window_days + 1), "until": day_start(day + 1)},
    )
    return int(total or 0)


def tier_for(points: int, tiers: Sequence[Tier]) -> Tier:
    """The highest tier whose threshold ``points`` reaches (tiers are in ascending order)."""
    reached = tiers[0]
    for tier in tiers:
        if points >= tier.threshold_points:
            reached = tier
    return reached
