"""The tier basis: ``qualifying_days`` kept by the write path, and the reads of a member's
qualifying points over a trailing window (exact to the microsecond)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    Table,
    bindparam,
    case,
    func,
    literal_column,
    null,
    select,
    text,
    union_all,
)
from sqlalchemy.orm import Session

from coalition.config import Tier
from coalition.db import AnyOf, HotStatement, dialect_of
from coalition.ledger.kinds import TIER_SIGNS
from coalition.ledger.tables import _MEMBERS, _TRANSACTIONS
from coalition.models import QualifyingDay

if TYPE_CHECKING:
    from coalition.ledger.post import Header

_QUALIFYING_DAYS = cast("Table", QualifyingDay.__table__)
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
    """The UTC day ``at`` falls on, in days since 1970-01-01: its ``qualifying_days`` key."""
    return (at - _EPOCH) // _DAY


def window(since: datetime, until: datetime) -> dict[str, Any]:
    """The bind parameters of the tier window from ``since`` to ``until`` (``since <= until``)
    that :data:`MEMBER_QUALIFYING_POINTS` and the other tier reads take (with ``:member``)."""
    since_day, until_day = day_of(since), day_of(until)
    return {
        "since": since,
        "until": until,
        "since_day": since_day,
        "until_day": until_day,
        "since_day_end": _EPOCH + (since_day + 1) * _DAY,
        "until_day_end": _EPOCH + (until_day + 1) * _DAY,
    }


def _window_parts(member: Any) -> tuple[Any, Any, Any]:
    """The three parts of a member's tier basis over a :func:`window` (``member``: the
    condition on a ``member_id`` column, given the column): the whole days after the first
    day up to the last one from ``qualifying_days``; plus the first day's transactions from
    ``since`` on; less the last day's transactions after ``until``. Each part reads at most a
    day of the member's transactions through ``ix_transactions_member_occurred``, however long
    the window; and with ``since`` and ``until`` on one day the parts still add up (the days'
    part is empty). Each part selects (member_id, sum)."""
    days = select(_QUALIFYING_DAYS.c.member_id, func.sum(_QUALIFYING_DAYS.c.points)).where(
        member(_QUALIFYING_DAYS.c.member_id),
        _QUALIFYING_DAYS.c.day > bindparam("since_day"),
        _QUALIFYING_DAYS.c.day <= bindparam("until_day"),
    )
    first = select(_TRANSACTIONS.c.member_id, func.sum(_SIGNED_POINTS)).where(
        member(_TRANSACTIONS.c.member_id),
        _COUNTS_FOR_TIER,
        _TRANSACTIONS.c.occurred_at >= bindparam("since"),
        _TRANSACTIONS.c.occurred_at < bindparam("since_day_end"),
    )
    after = select(_TRANSACTIONS.c.member_id, -func.sum(_SIGNED_POINTS)).where(
        member(_TRANSACTIONS.c.member_id),
        _COUNTS_FOR_TIER,
        _TRANSACTIONS.c.occurred_at > bindparam("until"),
        _TRANSACTIONS.c.occurred_at < bindparam("until_day_end"),
    )
    return days, first, after


def _one_member(column: Any) -> Any:
    return column == bindparam("member")


def _scalar(part: Any) -> Any:
    return func.coalesce(part.with_only_columns(part.selected_columns[1]).scalar_subquery(), 0)


# The tier basis of ``:member`` over a window, as one scalar.
_DAYS_PART, _FIRST_PART, _AFTER_PART = _window_parts(_one_member)
_QUALIFYING_POINTS = select(_scalar(_DAYS_PART) + _scalar(_FIRST_PART) + _scalar(_AFTER_PART))
_MEMBER_QUALIFYING_POINTS = select(_QUALIFYING_POINTS.scalar_subquery()).where(
    _MEMBERS.c.id == bindparam("member")
)
#: A member's :func:`qualifying_points` as a scalar subquery (``:member`` and a
#: :func:`window`), for an operation to read along with what else it needs: NULL when there is
#: no such member.
MEMBER_QUALIFYING_POINTS = _MEMBER_QUALIFYING_POINTS.scalar_subquery()


# The bulk earn's tier history (:func:`qualifying_history`): its members' rows from
# ``:history_from`` to ``:history_to`` outside the core window (before ``:since``, after
# ``:until``), one by one, each side one index range; and the core's parts
# (:func:`_window_parts`) summed per member with a NULL time. An empty core: every row.
def _history_rows(*bounds: Any) -> Any:
    return select(_TRANSACTIONS.c.member_id, _TRANSACTIONS.c.occurred_at, _SIGNED_POINTS).where(
        AnyOf(_TRANSACTIONS.c.member_id, "members"), _COUNTS_FOR_TIER, *bounds
    )


_HISTORY_FROM = _TRANSACTIONS.c.occurred_at >= bindparam("history_from")
_HISTORY_TO = _TRANSACTIONS.c.occurred_at <= bindparam("history_to")
_HISTORY_ROWS = _history_rows(_HISTORY_FROM, _HISTORY_TO)
_QUALIFYING_HISTORY = union_all(
    _history_rows(_HISTORY_FROM, _TRANSACTIONS.c.occurred_at < bindparam("since")),
    _history_rows(_TRANSACTIONS.c.occurred_at > bindparam("until"), _HISTORY_TO),
    *(
        part.with_only_columns(part.selected_columns[0], null(), part.selected_columns[1]).group_by(
            part.selected_columns[0]
        )
        for part in _window_parts(lambda column: AnyOf(column, "members"))
    ),
)


def qualifying_points(session: Session, member_id: str, since: datetime, until: datetime) -> int:
    """Points earned (less earn reversals) that occurred from ``since`` to ``until``: what a
    member's tier at ``until`` rests on (a backdated earn does not count later earns)."""
    total = session.scalar(_QUALIFYING_POINTS, {"member": member_id, **window(since, until)})
    return int(total or 0)


def qualifying_history(
    session: Session,
    member_ids: Iterable[str],
    since: datetime,
    until: datetime,
    core: tuple[datetime, datetime],
) -> dict[str, list[tuple[datetime | None, int]]]:
    """The members' earns (+) and earn reversals (-) that occurred from ``since`` to ``until``:
    what :func:`qualifying_points` sums, read once for many members and many moments (the bulk
    earn's tier basis), as ``{member: [(occurred_at, points)]}``.

    Those that occurred within ``core`` (a span inside every window the caller asks about) come
    as sums per member with ``occurred_at`` ``None``, read from ``qualifying_days`` and the
    core's two edge days (:func:`_window_parts`), so a long history is not read row by row;
    the others come one by one.
    """
    ids = sorted(set(member_ids))
    history: dict[str, list[tuple[datetime | None, int]]] = {member: [] for member in ids}
    if not ids:
        return history
    params = {"members": ids, "history_from": since, "history_to": until, **window(*core)}
    # An empty core (the batch spans more than a window): every row comes one by one.
    stmt = _QUALIFYING_HISTORY if core[0] <= core[1] else _HISTORY_ROWS
    for member_id, occurred_at, points in session.execute(stmt, params):
        history[member_id].append((occurred_at, int(points or 0)))
    return history


def tier_for(points: int, tiers: Sequence[Tier]) -> Tier:
    """The highest tier whose threshold ``points`` reaches (tiers are in ascending order)."""
    reached = tiers[0]
    for tier in tiers:
        if points >= tier.threshold_points:
            reached = tier
    return reached


# Add to a member's day of tier basis (one row per member and day: ON CONFLICT may not touch
# a row twice, so the caller sums first). PostgreSQL takes the rows as arrays in one
# statement; SQLite one statement per row.
_ADD_QUALIFYING_DAYS = HotStatement(
    text(
        """
        INSERT INTO qualifying_days (member_id, day, points)
        SELECT * FROM unnest(CAST(:members AS VARCHAR[]), CAST(:days AS INTEGER[]),
            CAST(:points AS BIGINT[]))
        ON CONFLICT (member_id, day)
            DO UPDATE SET points = qualifying_days.points + excluded.points
        """
    )
)
_ADD_QUALIFYING_DAY = text(
    """
    INSERT INTO qualifying_days (member_id, day, points) VALUES (:member, :day, :points)
    ON CONFLICT (member_id, day) DO UPDATE SET points = qualifying_days.points + excluded.points
    """
)


def _tier_points(header: Header) -> int:
    """What ``header`` adds to its member's tier basis on the day it occurred (0: nothing)."""
    return TIER_SIGNS.get(header.kind, 0) * header.points


def _count_for_tier(session: Session, headers: Iterable[Header]) -> None:
    """Add the earns and earn reversals among ``headers`` to their members' ``qualifying_days``
    (under the member row locks their writes took, so no two transactions race on a row)."""
    deltas: dict[tuple[str, int], int] = {}
    for header in headers:
        if points := _tier_points(header):
            key = (header.member_id, day_of(header.occurred_at))
            deltas[key] = deltas.get(key, 0) + points
    if not deltas:
        return
    rows = sorted(deltas.items())
    if dialect_of(session) == "postgresql":
        _ADD_QUALIFYING_DAYS.rows(
            session,
            {
                "members": [member for (member, _), _ in rows],
                "days": [day for (_, day), _ in rows],
                "points": [points for _, points in rows],
            },
        )
    else:
        session.execute(
            _ADD_QUALIFYING_DAY,
            [{"member": member, "day": day, "points": points} for (member, day), points in rows],
        )
