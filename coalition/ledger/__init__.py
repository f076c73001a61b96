"""The points ledger: double-entry transactions, lots, holds and expiry.

Every function here runs inside a database transaction the caller owns and changes nothing
when it raises a :class:`~coalition.errors.CoalitionError` before its first write. Every write
that touches a member starts by updating (and so locking) the member's row, which serializes
all changes to one member's balance and lots on PostgreSQL; SQLite has one writer anyway.

The rules, in the words of docs/recipes.md:
- a credit (earn, bonus, positive adjustment, burn reversal) adds a lot, or restores the lots a
  burn took, and first fills any clawback deficit;
- a debit (burn, capture, negative adjustment, earn reversal, expiry) takes points from lots
  soonest-expiring first and records each lot it touched;
- only a capture or an earn reversal may take more than the lots hold: the rest becomes the
  member's deficit, which the next credit fills.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from functools import cache
from operator import attrgetter
from typing import Any, cast

import psycopg
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    Row,
    String,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal_column,
    null,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, configure_mappers
from sqlalchemy.orm.instrumentation import manager_of_class
from sqlalchemy.types import NullType, TypeDecorator

from coalition import outbox
from coalition.config import Tier
from coalition.db import AnyOf, HotStatement, Prelude, dialect_of, named_sql
from coalition.errors import InsufficientPoints, UnknownMember, invariant
from coalition.ids import new_id
from coalition.models import (
    OPERATOR_ACCOUNTS,
    Account,
    Hold,
    HoldStatus,
    Lot,
    LotMovement,
    Member,
    QualifyingDay,
    Transaction,
    TransactionKind,
)

# The hot path runs pre-built Core statements on the tables: building an ORM-enabled statement
# on every call cost several times the Python the database driver needs to run it (about 1.6x
# the single-operation throughput; docs/benchmarks.md).
_MEMBERS = cast("Table", Member.__table__)
_TRANSACTIONS = cast("Table", Transaction.__table__)
_LOTS = cast("Table", Lot.__table__)
_MEMBER_STATE = select(_MEMBERS.c.balance, _MEMBERS.c.held).where(
    _MEMBERS.c.id == bindparam("member")
)
_CHANGE_MEMBER = (
    update(_MEMBERS)
    .where(_MEMBERS.c.id == bindparam("member"))
    .values(
        balance=_MEMBERS.c.balance + bindparam("balance_delta"),
        held=_MEMBERS.c.held + bindparam("held_delta"),
    )
    .returning(_MEMBERS.c.balance, _MEMBERS.c.held, _MEMBERS.c.account_id)
)
_CHANGE_MEMBER_IF_AVAILABLE = _CHANGE_MEMBER.where(
    _MEMBERS.c.balance - _MEMBERS.c.held >= bindparam("need_available")
)
_QUALIFYING_DAYS = cast("Table", QualifyingDay.__table__)
#: What a transaction adds to its member's tier basis: an earn its points, an earn reversal
#: minus its points (other kinds are filtered out by :data:`_COUNTS_FOR_TIER`).
_SIGNED_POINTS = case(
    (_TRANSACTIONS.c.kind == "earn", _TRANSACTIONS.c.points), else_=-_TRANSACTIONS.c.points
)
# The kinds are SQL literals, not an expanding parameter: SQLAlchemy renders an expanding
# ``IN`` again at every execution, which was a tenth of a signed earn's CPU.
_COUNTS_FOR_TIER = _TRANSACTIONS.c.kind.in_(
    (literal_column("'earn'"), literal_column("'earn_reversal'"))
)
#: The sign each kind counts with in the tier basis (what ``qualifying_days`` keeps).
_TIER_SIGN = {TransactionKind.EARN: 1, TransactionKind.EARN_REVERSAL: -1}
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
_HOLDS = cast("Table", Hold.__table__)
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
_INSERT_TRANSACTION = insert(_TRANSACTIONS)
_INSERT_LOT = insert(_LOTS)
_UPDATE_LOT = update(_LOTS).where(_LOTS.c.id == bindparam("lot")).values(remaining=bindparam("to"))
_INSERT_LOT_MOVEMENTS = insert(cast("Table", LotMovement.__table__))
_LOCK_MEMBERS = (
    select(_MEMBERS.c.id, _MEMBERS.c.balance, _MEMBERS.c.held, _MEMBERS.c.account_id)
    .where(AnyOf(_MEMBERS.c.id, "members"))
    .order_by(_MEMBERS.c.id)
    .with_for_update()
)
_ADD_TO_BALANCE = (
    update(_MEMBERS)
    .where(_MEMBERS.c.id == bindparam("member"))
    .values(balance=_MEMBERS.c.balance + bindparam("balance_delta"))
)


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
#: Rows one bulk statement may touch (members locked, credits written): bounds its parameters.
BULK_MAX = 5000

#: Lots read per round trip when taking points from a member's lots (the first read is
#: smaller: most debits are covered by a member's few soonest-expiring lots).
LOT_PAGE = 200
LOT_FIRST_PAGE = 16
#: Members or holds one expiry job run handles before it commits and returns.
EXPIRY_BATCH = 500


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


# --- members -----------------------------------------------------------------------------


def create_member(session: Session, member_id: str | None, now: datetime) -> tuple[str, bool]:
    """Create a member (with its ledger account); return (id, created). An existing id is kept."""
    if member_id is not None:
        existing = session.scalar(select(Member.id).where(Member.id == member_id))
        if existing is not None:
            return existing, False
    account_id = session.scalar(insert(Account).values(kind="member").returning(Account.id))
    assert account_id is not None
    new = member_id or new_id("mem")
    session.execute(
        insert(Member).values(id=new, account_id=account_id, balance=0, held=0, created_at=now)
    )
    return new, True


def member_state(session: Session, member_id: str) -> MemberState:
    """The member's balance and held points; :class:`UnknownMember` if there is no such member."""
    row = session.execute(_MEMBER_STATE, {"member": member_id}).one_or_none()
    if row is None:
        raise UnknownMember(f"no member {member_id!r}", member_id=member_id)
    return MemberState(member_id, row.balance, row.held)


def qualifying_points(session: Session, member_id: str, since: datetime, until: datetime) -> int:
    """Points earned (less earn reversals) that occurred from ``since`` to ``until``: what a
    member's tier at ``until`` rests on (a backdated earn does not count later earns)."""
    total = session.scalar(_QUALIFYING_POINTS, {"member": member_id, **window(since, until)})
    return int(total or 0)


@dataclass(frozen=True, slots=True)
class LockedMember:
    """A member row read (and, on PostgreSQL, locked) by :func:`lock_members`."""

    state: MemberState
    account_id: int


def lock_members(session: Session, member_ids: Iterable[str]) -> dict[str, LockedMember]:
    """The members that exist among ``member_ids``, their rows locked in id order (``FOR
    UPDATE`` on PostgreSQL, so two batches never deadlock; SQLite has one writer anyway).

    One statement for the whole set; an id that is not a member is simply absent.
    """
    ids = sorted(set(member_ids))
    invariant(len(ids) <= BULK_MAX, f"{len(ids)} members in one statement")
    if not ids:
        return {}
    rows = session.execute(_LOCK_MEMBERS, {"members": ids}).all()
    return {
        row.id: LockedMember(MemberState(row.id, row.balance, row.held), row.account_id)
        for row in rows
    }


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


def member_due(session: Session, member_id: str, now: datetime) -> tuple[int, int]:
    """(lots, active holds) of the member past their expiry at ``now``: what must be expired or
    released before it spends again. :class:`UnknownMember` if there is no such member; one
    statement for both, so a burn or hold checks the member and its due work at once.
    """
    row = session.execute(_MEMBER_DUE, {"member": member_id, "now": now}).one_or_none()
    if row is None:
        raise UnknownMember(f"no member {member_id!r}", member_id=member_id)
    return int(row[0]), int(row[1])


def tier_for(points: int, tiers: Sequence[Tier]) -> Tier:
    """The highest tier whose threshold ``points`` reaches (tiers are in ascending order)."""
    reached = tiers[0]
    for tier in tiers:
        if points >= tier.threshold_points:
            reached = tier
    return reached


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
        _QUALIFYING_POINTS.scalar_subquery(),
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
    session: Session, member_id: str, *, since: datetime, now: datetime
) -> MemberSnapshot:
    """The member's balance and held points, its :func:`qualifying_points` from ``since`` to
    ``now``, and its points in lots and active holds past their expiry (what the jobs, or its
    next burn or hold, will expire and release), in one statement; :class:`UnknownMember` if there
    is no such member."""
    row = _MEMBER_SNAPSHOT.first(session, {"member": member_id, **window(since, now), "now": now})
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
    assert all(fixed[k] == v for k, v in fixed_too.items() if k in fixed), "bind names clash"
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
    session: Session,
    member_id: str,
    *,
    since: datetime,
    now: datetime,
    prelude: Prelude | None = None,
) -> tuple[MemberSnapshot, list[tuple[int, datetime]]]:
    """What a balance read shows: the :func:`member_snapshot` and the :func:`expiring_lots`
    after ``now``, after the ``prelude``'s write (the request's nonce, which it settles first:
    a replay is refused before the member is looked for). On PostgreSQL one statement."""
    if dialect_of(session) != "postgresql":
        if prelude is not None:
            prelude.alone(session)
        snapshot = member_snapshot(session, member_id, since=since, now=now)
        return snapshot, expiring_lots(session, member_id, after=now)
    statement, fixed = _balance_read(prelude.sql if prelude is not None else None)
    params = {
        "member": member_id,
        **window(since, now),
        "now": now,
        "after": now,
        "limit": EXPIRING_DATES,
        **fixed,
    }
    if prelude is not None:
        assert not prelude.params.keys() & params.keys(), "a prelude's parameter clashes"
        params.update(prelude.params)
    row = statement.first(session, params)
    assert row is not None
    if prelude is not None:
        prelude.settle(session, int(row[0]))
    _, balance, held, qualifying, overdue_points, overdue_held, points, dates = row
    if balance is None:
        raise UnknownMember(f"no member {member_id!r}", member_id=member_id)
    state = MemberState(member_id, balance, held)
    snapshot = MemberSnapshot(state, int(qualifying or 0), int(overdue_points), int(overdue_held))
    return snapshot, _expiring(zip(points or (), dates or (), strict=True))


# --- the member row: the only balance updated in place -----------------------------------


def _change_member(
    session: Session,
    member_id: str,
    *,
    balance_delta: int,
    held_delta: int = 0,
    need_available: int | None = None,
) -> tuple[MemberState, int] | None:
    """Apply deltas to the member row, locking it: the state after, and the member's account
    (read in the same statement, so no separate lookup).

    ``None`` when ``need_available`` is not met or there is no such member. With
    ``need_available`` the update is conditional (``balance - held >= need``), so two
    concurrent burns can never overdraw a member.
    """
    params = {"member": member_id, "balance_delta": balance_delta, "held_delta": held_delta}
    stmt = _CHANGE_MEMBER
    if need_available is not None:
        stmt = _CHANGE_MEMBER_IF_AVAILABLE
        params["need_available"] = need_available
    row = session.execute(stmt, params).one_or_none()
    if row is None:
        return None
    return MemberState(member_id, row.balance, row.held), row.account_id


def _require_member_change(
    session: Session,
    member_id: str,
    *,
    balance_delta: int,
    held_delta: int = 0,
    need_available: int | None = None,
) -> tuple[MemberState, int]:
    """:func:`_change_member`; :class:`UnknownMember` or :class:`InsufficientPoints` if not."""
    changed = _change_member(
        session,
        member_id,
        balance_delta=balance_delta,
        held_delta=held_delta,
        need_available=need_available,
    )
    if changed is not None:
        return changed
    current = member_state(session, member_id)  # raises UnknownMember
    raise InsufficientPoints(
        f"member has {current.available} points available, {need_available} needed",
        available=current.available,
        requested=need_available,
    )


# --- transfers ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """What a posted transaction says of itself: every column of its row but
    ``balance_after``, which the member row gives when it is written. Every transaction of the
    ledger is posted from one of these (:func:`_posted`)."""

    kind: TransactionKind
    member_id: str
    points: int
    occurred_at: datetime
    posted_at: datetime
    partner_id: str | None = None
    reference: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    rate_card_id: str | None = None
    tier: str | None = None
    reverses: str | None = None
    hold_id: str | None = None
    overdraft_points: int = 0
    reason: str | None = None
    #: The accounts the transfer debits and credits: set by the ledger operation that posts
    #: it (``None`` until then, or for the member's own account in a one-statement write,
    #: which names it from the member row).
    debit_account_id: int | None = None
    credit_account_id: int | None = None
    id: str = field(default_factory=lambda: new_id("txn"))

    def row(self) -> dict[str, Any]:
        """The ``transactions`` row's columns, ``balance_after`` aside."""
        return dict(zip(_HEADER_COLUMNS, _header_values(self), strict=True))


_HEADER_COLUMNS = tuple(f.name for f in fields(Header))


def _between(header: Header, member_account: int, other: int, *, to_member: bool) -> Header:
    """The header as a transfer between the member's account and ``other``: crediting the
    member (``to_member``) or debiting it."""
    if to_member:
        return replace(header, debit_account_id=other, credit_account_id=member_account)
    return replace(header, debit_account_id=member_account, credit_account_id=other)


#: A header's column values in ``_HEADER_COLUMNS`` order, as a tuple (one C call).
_header_values = attrgetter(*_HEADER_COLUMNS)


def _posted(
    session: Session, header: Header, balance_after: int, *, tier_counted: bool = False
) -> Transaction:
    """:func:`_posted_many` of one transaction."""
    return _posted_many(session, [(header, balance_after)], tier_counted=tier_counted)[0]


def _posted_many(
    session: Session, posted: Sequence[tuple[Header, int]], *, tier_counted: bool = False
) -> list[Transaction]:
    """The one place every posted transaction passes (``(header, balance_after)``), in the
    database transaction that wrote it, whichever statements wrote it (the general path's, a
    one-statement fast path's, a bulk insert's): where the members' tier basis
    (``qualifying_days``), the event outbox and the metrics attach. Many at once cost what one
    does: one statement for the tier basis, one for the events at commit. ``tier_counted``:
    the statement that wrote them added them to the tier basis already (the one-statement
    credit)."""
    configure_mappers()  # _transaction_of bypasses the constructor, which would do this
    txns = []
    for header, balance_after in posted:
        invariant(
            header.points > 0
            and header.debit_account_id is not None
            and header.credit_account_id is not None
            and header.debit_account_id != header.credit_account_id,
            f"{header.id}: a transfer moves positive points between two accounts",
        )
        txns.append(_transaction_of(header, balance_after))
    if not tier_counted:
        _count_for_tier(session, [header for header, _ in posted])
    outbox.transactions_posted(session, txns)
    return txns


_NEW_TRANSACTION = manager_of_class(Transaction).new_instance


def _transaction_of(header: Header, balance_after: int) -> Transaction:
    """A transient :class:`Transaction` of the header's row. Filled in as a loaded row is, not
    through the mapped class's constructor: that costs about 8 times as much, which a bulk
    import pays per row (docs/benchmarks.md)."""
    txn: Transaction = _NEW_TRANSACTION()
    values = zip(_HEADER_COLUMNS, _header_values(header), strict=True)
    txn.__dict__.update(values, balance_after=balance_after)
    return txn


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
    return _TIER_SIGN.get(header.kind, 0) * header.points


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


def _write(session: Session, header: Header, balance_after: int) -> Transaction:
    """Insert a transfer (its two accounts set, by :func:`_between`)."""
    session.execute(_INSERT_TRANSACTION, [{**header.row(), "balance_after": balance_after}])
    return _posted(session, header, balance_after)


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
        assert last.expires_at is not None
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
        assert lot_id is not None
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


# --- the operations ----------------------------------------------------------------------

# A credit of a member who owes nothing, in one statement (PostgreSQL's data-modifying CTEs):
# the member row updated (and locked), the transfer, the new lot and
# what it adds to the member's tier basis (:func:`_count_for_tier`, here in SQL). No
# row comes back when there is no such member or it owes points (a deficit to fill first):
# then nothing was written, and the statements of the general path do the work.
# The header's row, with the balance the member row ``m`` of the statement came back with
# (every column of ledger.Header, bound by name).
# The member's own account is the one of the two left NULL, named from the member row.
_TRANSACTION_FROM_MEMBER = """
        INSERT INTO transactions (id, kind, partner_id, member_id, reference, points,
            amount_minor, currency, rate_card_id, tier, occurred_at, posted_at, reverses,
            hold_id, balance_after, overdraft_points, reason, debit_account_id,
            credit_account_id)
        SELECT :id, :kind, :partner_id, :member_id, :reference, :points, :amount_minor,
            :currency, :rate_card_id, :tier, :occurred_at, :posted_at, :reverses, :hold_id,
            m.balance, :overdraft_points, :reason,
            COALESCE(CAST(:debit_account_id AS BIGINT), m.account_id),
            COALESCE(CAST(:credit_account_id AS BIGINT), m.account_id)
        FROM m
        RETURNING id"""
_CREDIT_IN_ONE = HotStatement(
    text(
        f"""
    WITH m AS (
        UPDATE members SET balance = balance + :points
        WHERE id = :member_id AND balance >= 0
        RETURNING balance, held, account_id
    ), t AS ({_TRANSACTION_FROM_MEMBER}
    ), l AS (
        INSERT INTO lots (member_id, origin_partner_id, transaction_id, points, remaining,
            expires_at, is_deficit)
        SELECT :member_id, :origin_partner_id, t.id, :points, :points, :expires_at, false
        FROM t
    ), q AS (
        INSERT INTO qualifying_days (member_id, day, points)
        SELECT :member_id, :day, :tier_points FROM t WHERE CAST(:tier_points AS BIGINT) <> 0
        ON CONFLICT (member_id, day)
            DO UPDATE SET points = qualifying_days.points + excluded.points
    )
    SELECT balance, held, account_id FROM m
    """  # noqa: S608 (built from constants)
    )
)


def _credit_in_one(session: Session, c: Credit) -> Posted | None:
    """:func:`credit` in one statement on PostgreSQL; ``None`` (nothing written) when the
    member is unknown or owes points."""
    params = {
        **replace(c.header, debit_account_id=c.from_account).row(),
        "origin_partner_id": c.origin_partner_id,
        "expires_at": c.expires_at,
        "day": day_of(c.header.occurred_at),
        "tier_points": _tier_points(c.header),
    }
    done = _CREDIT_IN_ONE.first(session, params)
    if done is None:
        return None
    balance, held, account = done
    header = _between(c.header, account, c.from_account, to_member=True)
    txn = _posted(session, header, balance, tier_counted=True)
    return Posted(txn, MemberState(c.header.member_id, balance, held))


def credit(session: Session, c: Credit) -> Posted:
    """Give a member ``points`` in a new lot (earn, bonus, positive adjustment)."""
    if dialect_of(session) == "postgresql":
        posted = _credit_in_one(session, c)
        if posted is not None:
            return posted
    member_id, points = c.header.member_id, c.header.points
    state, member_acct = _require_member_change(session, member_id, balance_delta=points)
    header = _between(c.header, member_acct, c.from_account, to_member=True)
    txn = _write(session, header, state.balance)
    _add_lot(
        session,
        member_id=member_id,
        txn_id=txn.id,
        points=points,
        origin_partner_id=c.origin_partner_id,
        expires_at=c.expires_at,
    )
    if state.balance - points < 0:
        _fill_deficit(session, member_id, txn.id)
    return Posted(txn, state)


@dataclass(frozen=True, slots=True)
class Credit:
    """What :func:`credit` (and, many at once, :func:`credit_many`) posts: the transaction,
    the account the points come from, and the lot they make."""

    header: Header
    from_account: int
    origin_partner_id: str | None
    expires_at: datetime

    @property
    def member_id(self) -> str:
        """The member credited."""
        return self.header.member_id

    @property
    def points(self) -> int:
        """The points credited."""
        return self.header.points


def credit_many(
    session: Session, credits: Sequence[Credit], members: dict[str, LockedMember]
) -> list[Posted]:
    """:func:`credit` for many credits at once: the same transfers, lots and
    balances as calling it for each one in order, in a handful of statements whatever their
    number: the transfers and lots by :func:`_insert_rows` (``COPY`` on
    PostgreSQL), the members' balances in one update, the tier basis and the events by
    :func:`_posted_many`.

    ``members``: :func:`lock_members` of every member credited, read in this transaction. None
    may owe points (a negative balance): a deficit must be filled, which :func:`credit` does.
    Balances are computed here from the locked rows, so several credits of one member each
    record the right ``balance_after``.
    """
    invariant(len(credits) <= BULK_MAX, f"{len(credits)} credits in one batch")
    if not credits:
        return []
    balances = {member_id: members[member_id].state.balance for member_id in
                {c.member_id for c in credits}}  # fmt: skip
    invariant(
        all(balance >= 0 for balance in balances.values()), "a bulk credit of a member who owes"
    )
    rows: list[tuple[Any, ...]] = []
    lots: list[tuple[Any, ...]] = []
    written: list[tuple[Header, int]] = []
    for c in credits:
        points = c.points
        header = _between(c.header, members[c.member_id].account_id, c.from_account, to_member=True)
        balance = balances[c.member_id] = balances[c.member_id] + points
        rows.append((*_header_values(header), balance))
        lots.append(
            (c.member_id, c.origin_partner_id, header.id, points, points, c.expires_at, False)
        )
        written.append((header, balance))
    _insert_rows(session, _TRANSACTIONS, _TRANSACTION_COLUMNS, rows)
    _insert_rows(session, _LOTS, _LOT_COLUMNS, lots)
    deltas = sorted((member_id, balance - members[member_id].state.balance)
                    for member_id, balance in balances.items())  # fmt: skip
    if dialect_of(session) == "postgresql":
        session.execute(
            _ADD_TO_BALANCES,
            {"members": [m for m, _ in deltas], "deltas": [d for _, d in deltas]},
        )
    else:
        session.execute(_ADD_TO_BALANCE, [{"member": m, "balance_delta": d} for m, d in deltas])
    return [
        Posted(
            txn, MemberState(txn.member_id, txn.balance_after, members[txn.member_id].state.held)
        )
        for txn in _posted_many(session, written)
    ]


_TRANSACTION_COLUMNS = (*_HEADER_COLUMNS, "balance_after")
_LOT_COLUMNS = (
    "member_id",
    "origin_partner_id",
    "transaction_id",
    "points",
    "remaining",
    "expires_at",
    "is_deficit",
)
# The members' new balances in one statement on PostgreSQL (arrays of ids and deltas).
_ADD_TO_BALANCES = text(
    """
    UPDATE members SET balance = members.balance + d.delta
    FROM unnest(CAST(:members AS VARCHAR[]), CAST(:deltas AS BIGINT[])) AS d(id, delta)
    WHERE members.id = d.id
    """
)


#: The PostgreSQL type a binary ``COPY`` sends for a column of these types (the first match).
_COPY_TYPES = (
    (Boolean, "bool"),
    (BigInteger, "int8"),
    (Integer, "int4"),
    (DateTime, "timestamptz"),
    (String, "varchar"),
)


@cache
def _copy_types(table: Table, columns: tuple[str, ...]) -> tuple[str, ...]:
    """The types a binary ``COPY`` of ``columns`` into ``table`` sends (a column without a
    type of its own has its foreign key's)."""
    names = []
    for name in columns:
        column = table.c[name]
        kind = column.type
        if isinstance(kind, NullType) and column.foreign_keys:
            kind = next(iter(column.foreign_keys)).column.type
        if isinstance(kind, TypeDecorator):
            kind = kind.impl_instance
        invariant(not isinstance(kind, DateTime) or kind.timezone, f"{name}: with its zone")
        names.append(next(pg for python, pg in _COPY_TYPES if isinstance(kind, python)))
    return tuple(names)


def _insert_rows(
    session: Session, table: Table, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    """Insert ``rows`` (tuples of ``columns``' values) into ``table``, in the session's
    transaction: one binary ``COPY ... FROM STDIN`` on PostgreSQL (psycopg 3's
    ``cursor.copy``: the cheapest way in for a bulk import's rows; binary, the client sends
    and the server parses about a quarter of what the text format costs), one executemany
    insert on SQLite."""
    if dialect_of(session) != "postgresql":
        session.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])
        return
    raw = session.connection().connection.driver_connection
    assert raw is not None
    copy_sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    try:
        with raw.cursor() as cursor, cursor.copy(copy_sql) as copy:
            copy.set_types(list(_copy_types(table, columns)))
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as exc:
        # Raised as SQLAlchemy raises the driver's errors of its own statements: a unique key
        # that a concurrent write took first is an IntegrityError, which callers retry on.
        raise DBAPIError.instance(copy_sql, None, exc, psycopg.Error) from exc


# A debit on PostgreSQL in two statements: first the member row, updated only if it has the
# points available (and so locked), with the transfer; then, in a new
# statement whose snapshot sees every lot change committed before that lock was ours, the
# points taken from the member's open lots soonest-expiring first (a running sum over them),
# each taking recorded as a lot movement.
_DEBIT_MEMBER = HotStatement(
    text(
        f"""
    WITH m AS (
        UPDATE members SET balance = balance - :points
        WHERE id = :member_id AND balance - held >= :points
        RETURNING balance, held, account_id
    ), t AS ({_TRANSACTION_FROM_MEMBER}
    )
    SELECT balance, held, account_id FROM m
    """  # noqa: S608 (built from constants)
    )
)
_TAKE_FROM_LOTS = HotStatement(
    text(
        """
    WITH open AS (
        SELECT id, origin_partner_id, remaining,
            SUM(remaining) OVER (ORDER BY expires_at, id) - remaining AS before
        FROM lots
        WHERE member_id = :member_id AND remaining > 0
    ), taken AS (
        SELECT id, origin_partner_id, LEAST(remaining, :points - before) AS take
        FROM open WHERE before < :points
    ), u AS (
        UPDATE lots SET remaining = lots.remaining - taken.take
        FROM taken WHERE lots.id = taken.id
    ), mv AS (
        INSERT INTO lot_movements (transaction_id, lot_id, origin_partner_id, points)
        SELECT :txn_id, id, origin_partner_id, -take FROM taken
    )
    SELECT COALESCE(SUM(take), 0) FROM taken
    """
    )
)


def _debit_in_two(session: Session, header: Header, to_account: int) -> Posted | None:
    """:func:`debit` in two statements on PostgreSQL; ``None`` (nothing written) when the
    member is unknown or has fewer points available."""
    done = _DEBIT_MEMBER.first(session, replace(header, credit_account_id=to_account).row())
    if done is None:
        return None
    balance, held, account = done
    header = _between(header, account, to_account, to_member=False)
    (taken,) = _TAKE_FROM_LOTS.rows(
        session, {"member_id": header.member_id, "points": header.points, "txn_id": header.id}
    )[0]
    # available >= points and balance = sum(lots) > 0 means the lots cover it.
    invariant(taken == header.points, f"{header.id}: lots gave {taken} of {header.points}")
    txn = _posted(session, header, balance)
    return Posted(txn, MemberState(header.member_id, balance, held))


def debit(session: Session, header: Header, *, to_account: int) -> Posted:
    """Take the header's points the member has available (burn, negative adjustment).

    :class:`InsufficientPoints` (nothing written) when the available balance is short.
    """
    if dialect_of(session) == "postgresql":
        posted = _debit_in_two(session, header, to_account)
        if posted is not None:
            return posted
    member_id, points = header.member_id, header.points
    state, member_acct = _require_member_change(
        session, member_id, balance_delta=-points, need_available=points
    )
    header = _between(header, member_acct, to_account, to_member=False)
    txn = _write(session, header, state.balance)
    taken = _take(session, member_id, txn.id, points)
    # available >= points and balance = sum(lots) > 0 means the lots cover it.
    invariant(taken == points, f"{txn.id}: lots gave {taken} of {points}")
    return Posted(txn, state)


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
    state, member_acct = _require_member_change(
        session, hold.member_id, balance_delta=-points, held_delta=-hold.points
    )
    header = _between(header, member_acct, to_account, to_member=False)
    txn = _write(session, header, state.balance)
    taken = _take(session, hold.member_id, txn.id, points)
    if taken < points:
        _deepen_deficit(session, hold.member_id, txn.id, points - taken)
    _close_hold(session, hold, HoldStatus.CAPTURED, now, captured_points=points, txn_id=txn.id)
    return Posted(txn, state)


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
    outbox.hold_closed(
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
    outbox.hold_closed(session, hold, HoldStatus.VOIDED, now)
    return hold, MemberState(member_id, balance, held)


def lock_hold(session: Session, hold_id: str, partner_id: str) -> Hold | None:
    """The partner's hold, locked for a status change; ``None`` if it is not the partner's."""
    row = session.execute(
        select(Hold).where(Hold.id == hold_id, Hold.partner_id == partner_id).with_for_update()
    ).scalar_one_or_none()
    if row is not None:
        session.expunge(row)
    return row


def reverse_earn(
    session: Session, *, original: Transaction, header: Header, to_account: int
) -> Posted:
    """Take back the header's points of an earn (or bonus): its own lot first, then the others.

    When the member has already spent or holds those points, the reversal still happens: the
    member's available goes below zero and ``overdraft_points`` records by how much.
    """
    points, member_id = header.points, original.member_id
    invariant(header.member_id == member_id, f"{header.id} reverses another member's earn")
    state, member_acct = _require_member_change(session, member_id, balance_delta=-points)
    available_before = state.available + points
    overdraft = points - min(max(available_before, 0), points)
    header = _between(header, member_acct, to_account, to_member=False)
    txn = _write(session, replace(header, overdraft_points=overdraft), state.balance)
    own_lot = session.scalar(
        select(Lot.id).where(Lot.transaction_id == original.id, Lot.is_deficit.is_(False))
    )
    taken = _take(session, member_id, txn.id, points, first_lot_id=own_lot)
    if taken < points:
        _deepen_deficit(session, member_id, txn.id, points - taken)
    return Posted(txn, state)


def reverse_burn(
    session: Session,
    *,
    original: Transaction,
    header: Header,
    from_account: int,
    expires_at: datetime,
) -> Posted:
    """Give back the header's points of a burn to the lots it took them from, latest-expiring
    first.

    Points a capture took from the member's deficit (beyond its lots) come back as a new lot
    with no origin expiring at ``expires_at``; a deficit still open is then filled as after any
    credit. The deficit lot itself is never restored into: a later credit may have filled it.
    """
    points, member_id = header.points, original.member_id
    invariant(header.member_id == member_id, f"{header.id} reverses another member's burn")
    state, member_acct = _require_member_change(session, member_id, balance_delta=points)
    txn = _write(
        session, _between(header, member_acct, from_account, to_member=True), state.balance
    )
    related = select(Transaction.id).where(
        or_(Transaction.id == original.id, Transaction.reverses == original.id)
    )
    net_taken = (
        select(
            LotMovement.lot_id,
            func.sum(LotMovement.points).label("net"),
        )
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
        back = min(-int(net), left)
        moves.append((lot_id, origin, back, remaining + back))
        left -= back
        if left == 0:
            break
    _move(session, txn.id, moves)
    if left:
        _add_lot(
            session,
            member_id=member_id,
            txn_id=txn.id,
            points=left,
            origin_partner_id=None,
            expires_at=expires_at,
        )
    if state.balance - points < 0:
        _fill_deficit(session, member_id, txn.id)
    return Posted(txn, state)


def reversed_points(session: Session, original_id: str) -> int:
    """Points already reversed of a transaction."""
    total = session.scalar(
        select(func.coalesce(func.sum(Transaction.points), 0)).where(
            Transaction.reverses == original_id
        )
    )
    return int(total or 0)


def lock_transaction(session: Session, txn_id: str) -> Transaction | None:
    """A transaction, row-locked so that its reversals are serialized."""
    txn = session.execute(
        select(Transaction).where(Transaction.id == txn_id).with_for_update()
    ).scalar_one_or_none()
    if txn is not None:
        session.expunge(txn)
    return txn


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
