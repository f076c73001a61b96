"""The one place a movement is described and posted: the header of a transfer's row, the
movements a batch is made of (transfers, :class:`Credit` and :class:`Debit`; a hold placed or
closed, :class:`PlaceHold` and :class:`CloseHold`), the accounts a transfer moves points
between, the member row (the only balance kept in place), the bulk insert, and
:func:`_posted_many` and :func:`_holds_closed`, where the outbox and the metrics attach."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from functools import cache
from operator import attrgetter
from typing import Any, cast

import psycopg
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    String,
    Table,
    insert,
    inspect,
    select,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, configure_mappers
from sqlalchemy.orm.instrumentation import manager_of_class
from sqlalchemy.types import NullType, TypeDecorator

from coalition.db import AnyOf, dialect_of
from coalition.errors import InvariantViolated, invariant
from coalition.ids import new_id
from coalition.ledger import listeners
from coalition.ledger.reads import MemberState
from coalition.ledger.tables import (
    _MEMBERS,
    BULK_MAX,
)
from coalition.ledger.tiers import (
    TierBasis,
    day_of,
    tier_params,
    tier_points_of,
)
from coalition.models import (
    Account,
    Hold,
    HoldStatus,
    Member,
    Transaction,
    TransactionKind,
)

_LOCK_MEMBERS = (
    select(
        _MEMBERS.c.id,
        _MEMBERS.c.balance,
        _MEMBERS.c.held,
        _MEMBERS.c.account_id,
        _MEMBERS.c.tier_day,
        _MEMBERS.c.tier_since_day,
        _MEMBERS.c.tier_points,
    )
    .where(AnyOf(_MEMBERS.c.id, "members"))
    .order_by(_MEMBERS.c.id)
    .with_for_update()
)


# --- members -----------------------------------------------------------------------------


def create_member(session: Session, member_id: str | None, now: datetime) -> tuple[str, bool]:
    """Create a member (with its ledger account); return (id, created). An existing id is kept."""
    if member_id is not None:
        existing = session.scalar(select(Member.id).where(Member.id == member_id))
        if existing is not None:
            return existing, False
    account_id = session.scalar(insert(Account).values(kind="member").returning(Account.id))
    invariant(account_id is not None, "the new account has an id")
    new = member_id or new_id("mem")
    session.execute(
        insert(Member).values(id=new, account_id=account_id, balance=0, held=0, created_at=now)
    )
    return new, True


@dataclass(frozen=True, slots=True)
class LockedMember:
    """A member row read (and, on PostgreSQL, locked) by :func:`lock_members`."""

    state: MemberState
    account_id: int
    tier: TierBasis = field(default_factory=TierBasis)


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
        row.id: LockedMember(
            MemberState(row.id, row.balance, row.held),
            row.account_id,
            TierBasis(row.tier_day, row.tier_since_day, row.tier_points),
        )
        for row in rows
    }


def tier_change(header: Header, window_days: int | None) -> dict[str, Any] | None:
    """:func:`tiers.tier_params` of what ``header`` adds to its member's tier basis (``None``:
    its kind does not count); ``window_days`` (W) must be given for a kind that counts."""
    signed = tier_points_of(header.kind, header.points)
    if not signed:
        return None
    invariant(window_days is not None and window_days > 0, f"{header.kind}: no tier window")
    return tier_params(day_of(header.occurred_at), cast("int", window_days), signed)


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


def _posted(session: Session, header: Header, balance_after: int) -> Transaction:
    """:func:`_posted_many` of one transaction."""
    return _posted_many(session, [(header, balance_after)])[0]


def _posted_many(session: Session, posted: Sequence[tuple[Header, int]]) -> list[Transaction]:
    """The one place every posted transaction passes (``(header, balance_after)``), in the
    database transaction that wrote it, whichever statements wrote it (the general path's, a
    one-statement fast path's, a bulk insert's): where the listeners (the event outbox, the
    metrics) attach. Many at once cost what one does. (The tier basis is kept by the statement
    that updates the member row, ``coalition.ledger.tiers``.)"""
    if not _TRANSACTION_MAPPER.configured:  # configure_mappers() scans every registry
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
    listeners.transactions_posted(session, txns)
    return txns


_NEW_TRANSACTION = manager_of_class(Transaction).new_instance
_TRANSACTION_MAPPER = inspect(Transaction)


def _transaction_of(header: Header, balance_after: int) -> Transaction:
    """A transient :class:`Transaction` of the header's row. Filled in as a loaded row is, not
    through the mapped class's constructor: that costs about 8 times as much, which a bulk
    import pays per row (docs/benchmarks.md)."""
    txn: Transaction = _NEW_TRANSACTION()
    values = zip(_HEADER_COLUMNS, _header_values(header), strict=True)
    txn.__dict__.update(values, balance_after=balance_after)
    return txn


_TRANSACTION_COLUMNS = (*_HEADER_COLUMNS, "balance_after")

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
    if raw is None:
        raise InvariantViolated("no driver connection")
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


# --- movements: what :func:`coalition.ledger.batch.post` posts ---------------------------


class _Transfer:
    """What a credit and a debit read of their header: the member and the points moved."""

    __slots__ = ()
    header: Header

    @property
    def member_id(self) -> str:
        """The member credited or debited."""
        return self.header.member_id

    @property
    def points(self) -> int:
        """The points moved."""
        return self.header.points


@dataclass(frozen=True, slots=True)
class Credit(_Transfer):
    """Points to a member (earn, bonus, positive adjustment, burn reversal): the transaction,
    the account the points come from, and the lot they make; ``tier_window_days``: W, for a
    kind that counts in the tier basis (an earn).

    ``restores``: a burn whose points this gives back to the lots it took them from
    (latest-expiring first); only what those lots cannot take back makes the new lot (a
    capture's points taken from the member's deficit).
    """

    header: Header
    from_account: int
    origin_partner_id: str | None
    expires_at: datetime
    tier_window_days: int | None = None
    restores: str | None = None


@dataclass(frozen=True, slots=True)
class Debit(_Transfer):
    """Points taken from a member's lots soonest-expiring first (burn, negative adjustment,
    capture, earn reversal, expiry), to ``to_account``.

    Without ``overdraw`` the member must have the points available (:class:`InsufficientPoints`
    otherwise); with it (a capture, an earn reversal) what the lots lack becomes the member's
    deficit, and ``records_overdraft`` writes by how much the available balance went below
    zero in ``overdraft_points`` (an earn reversal). ``first_lot_id``: drained before the
    others (an earn reversal's own lot); ``expired_by``: only lots expired by then are taken
    (expiry). ``tier_window_days``: W, for a kind that counts in the tier basis. (A capture
    is a debit that may overdraw, after the :class:`CloseHold` of its hold in the same
    batch.)"""

    header: Header
    to_account: int
    overdraw: bool = False
    records_overdraft: bool = False
    first_lot_id: int | None = None
    expired_by: datetime | None = None
    tier_window_days: int | None = None

    @property
    def plain(self) -> bool:
        """A debit of points available, from any lot, nothing else (a burn, a negative
        adjustment): what the two-statement form on PostgreSQL writes."""
        return (
            not self.overdraw
            and self.first_lot_id is None
            and self.expired_by is None
            and not tier_points_of(self.header.kind, self.points)
        )


@dataclass(frozen=True, slots=True)
class PlaceHold:
    """``points`` of the member's available balance reserved at ``partner_id``'s checkout
    until ``expires_at`` (:class:`InsufficientPoints` if they are not available): the hold's
    row, ``active``; no transfer."""

    partner_id: str
    member_id: str
    reference: str
    points: int
    expires_at: datetime
    at: datetime
    id: str = field(default_factory=lambda: new_id("hold"))

    def hold(self) -> Hold:
        """The hold as placed (a transient object)."""
        return Hold(**dict(zip(_HOLD_COLUMNS, self.row(), strict=True)))

    def row(self) -> tuple[Any, ...]:
        """The ``holds`` row, in ``_HOLD_COLUMNS`` order."""
        return (
            *(self.id, self.partner_id, self.member_id, self.reference, self.points),
            *(HoldStatus.ACTIVE.value, self.expires_at, self.at, None, None),
        )


_HOLD_COLUMNS = (
    "id",
    "partner_id",
    "member_id",
    "reference",
    "points",
    "status",
    "expires_at",
    "created_at",
    "closed_at",
    "captured_points",
)


@dataclass(frozen=True, slots=True)
class CloseHold:
    """An active hold (read and locked by the caller) leaving ``active`` at ``at``: voided,
    expired, or captured (``captured_points``, its burn the :class:`Debit` that follows in the
    same batch, ``transaction_id``). Its points are no longer held; no transfer."""

    hold: Hold
    status: HoldStatus
    at: datetime
    captured_points: int | None = None
    transaction_id: str | None = None

    @property
    def member_id(self) -> str:
        """The member whose points the hold held."""
        return self.hold.member_id

    def closed(self) -> Hold:
        """The hold as closed (a transient object)."""
        values = {name: getattr(self.hold, name) for name in _HOLD_COLUMNS}
        values.update(status=self.status.value, closed_at=self.at)
        values.update(captured_points=self.captured_points)
        return Hold(**values)


def _holds_closed(session: Session, closes: Sequence[CloseHold]) -> None:
    """The one place every hold that leaves ``active`` passes, in the database transaction
    that closed it, whichever statement closed it: where the listeners hear of it."""
    for c in closes:
        listeners.hold_closed(
            session,
            c.hold,
            c.status,
            c.at,
            captured_points=c.captured_points,
            transaction_id=c.transaction_id,
        )


#: A movement of points between two accounts (a transfer).
Transfer = Credit | Debit
#: A change of a member's held points (no transfer).
HoldMovement = PlaceHold | CloseHold
#: One movement of a batch.
Movement = Transfer | HoldMovement
