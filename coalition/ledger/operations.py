"""The ledger's operations on a member: credits (one or many, :func:`post_credits`), debit,
and the reversals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    bindparam,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy.orm import Session

from coalition.db import HotStatement, dialect_of, named_sql
from coalition.errors import invariant
from coalition.ledger.lots import (
    _LOT_COLUMNS,
    _add_lot,
    _deepen_deficit,
    _fill_deficit,
    _move,
    _take,
)
from coalition.ledger.post import (
    _TRANSACTION_COLUMNS,
    Header,
    LockedMember,
    _between,
    _header_values,
    _insert_rows,
    _posted,
    _posted_many,
    _require_member_change,
    _write,
    lock_members,
    tier_change,
)
from coalition.ledger.reads import (
    MemberState,
    Posted,
    member_state,
)
from coalition.ledger.tables import (
    _LOTS,
    _MEMBERS,
    _TRANSACTIONS,
    BULK_MAX,
)
from coalition.ledger.tiers import (
    TIER_WRITE_WITHOUT_READ,
    BatchTiers,
    TierBasis,
    day_of,
    tier_points_of,
    tier_values,
)
from coalition.models import (
    Lot,
    LotMovement,
    Transaction,
)

# --- the operations ----------------------------------------------------------------------

# A credit of a member who owes nothing, in one statement (PostgreSQL's data-modifying CTEs):
# the member row updated (and locked) with its tier basis (``coalition.ledger.tiers``), the
# transfer, and the new lot. No row comes back when there is no such member, or it owes points
# (a deficit to fill first), or (unless ``:locked``) its tier basis must read its transactions
# (a new day's window): then nothing was written, and the caller locks the row first or takes
# the statements of the general path.
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


def _credit_in_one_statement(tier: bool) -> tuple[dict[str, Any], HotStatement]:
    member = (
        update(_MEMBERS)
        .where(_MEMBERS.c.id == bindparam("member_id"), _MEMBERS.c.balance >= 0)
        .values(balance=_MEMBERS.c.balance + bindparam("points"))
        .returning(_MEMBERS.c.balance, _MEMBERS.c.held, _MEMBERS.c.account_id)
    )
    if tier:
        member = member.values(**tier_values()).where(
            or_(sa_cast(bindparam("locked"), Boolean), TIER_WRITE_WITHOUT_READ)
        )
    member_sql, fixed = named_sql(member)
    return fixed, HotStatement(
        text(
            f"""
    WITH m AS ({member_sql}
    ), t AS ({_TRANSACTION_FROM_MEMBER}
    ), l AS (
        INSERT INTO lots (member_id, origin_partner_id, transaction_id, points, remaining,
            expires_at, is_deficit)
        SELECT :member_id, :origin_partner_id, t.id, :points, :points, :expires_at, false
        FROM t
    )
    SELECT balance, held, account_id FROM m
    """  # noqa: S608 (built from constants)
        )
    )


_CREDIT_FIXED, _CREDIT_IN_ONE = _credit_in_one_statement(tier=False)
_CREDIT_TIER_FIXED, _CREDIT_IN_ONE_TIER = _credit_in_one_statement(tier=True)


def _credit_in_one(
    session: Session, c: Credit, tier: dict[str, Any] | None, *, locked: bool
) -> Posted | None:
    """:func:`credit` in one statement on PostgreSQL; ``None`` (nothing written) when the
    member is unknown or owes points, or its tier basis needs the row locked first."""
    params = {
        **replace(c.header, debit_account_id=c.from_account).row(),
        "origin_partner_id": c.origin_partner_id,
        "expires_at": c.expires_at,
    }
    if tier is None:
        done = _CREDIT_IN_ONE.first(session, {**_CREDIT_FIXED, **params})
    else:
        params = {**_CREDIT_TIER_FIXED, **params, **tier, "locked": locked}
        done = _CREDIT_IN_ONE_TIER.first(session, params)
    if done is None:
        return None
    balance, held, account = done
    header = _between(c.header, account, c.from_account, to_member=True)
    txn = _posted(session, header, balance)
    return Posted(txn, MemberState(c.header.member_id, balance, held))


@dataclass(frozen=True, slots=True)
class Credit:
    """A credit :func:`post_credits` posts: the transaction, the account the points come
    from, and the lot they make; ``tier_window_days``: W, for a kind that counts in the tier
    basis (an earn)."""

    header: Header
    from_account: int
    origin_partner_id: str | None
    expires_at: datetime
    tier_window_days: int | None = None

    @property
    def member_id(self) -> str:
        """The member credited."""
        return self.header.member_id

    @property
    def points(self) -> int:
        """The points credited."""
        return self.header.points


def post_credits(
    session: Session,
    credits: Sequence[Credit],
    members: Mapping[str, LockedMember] | None = None,
    tiers: Mapping[str, TierBasis] | None = None,
) -> list[Posted]:
    """The one way points reach a member in a new lot (earn, bonus, positive adjustment), one
    credit or thousands: the same transfers, lots, balances and tier bases as posting each
    credit in order by itself, whatever the batch. :class:`UnknownMember` (nothing written)
    if a member credited does not exist.

    The batch: the members' rows locked (:func:`lock_members`, unless ``members`` are given,
    read in this transaction), their balances and tier bases computed here in Python
    (:class:`~coalition.ledger.tiers.BatchTiers`, unless ``tiers``, each member's basis after
    the batch, are given), the transfers and lots written by :func:`_insert_rows` (``COPY`` on
    PostgreSQL), the member rows in one update, the events by :func:`_posted_many`. A member
    who owes points (a clawback deficit) has each credit written by itself, then the deficit
    filled from its open lots (:func:`lots._fill_deficit`), as posting it alone would.

    A batch of one on PostgreSQL tries the one-statement shortcut first
    (:data:`_CREDIT_IN_ONE`), which writes the same rows when the member owes nothing.
    """
    invariant(len(credits) <= BULK_MAX, f"{len(credits)} credits in one batch")
    if not credits:
        return []
    if members is None:
        if len(credits) == 1 and dialect_of(session) == "postgresql":
            posted, members = _credit_shortcut(session, credits[0])
            if posted is not None:
                return [posted]
        if members is None:
            members = lock_members(session, (c.member_id for c in credits))
    for member_id in {c.member_id for c in credits} - members.keys():
        member_state(session, member_id)  # raises UnknownMember
    if tiers is None:
        tiers = _batch_tiers(session, credits, members)
    return _write_credits(session, credits, members, tiers)


def _credit_shortcut(
    session: Session, c: Credit
) -> tuple[Posted | None, dict[str, LockedMember] | None]:
    """A credit in one statement (PostgreSQL): posted, or ``None`` and the member's row if
    locked on the way (a new day's tier window reads its transactions: under the lock)."""
    tier = tier_change(c.header, c.tier_window_days)
    posted = _credit_in_one(session, c, tier, locked=False)
    if posted is not None or tier is None:
        return posted, None
    locked = lock_members(session, [c.member_id])
    member = locked.get(c.member_id)
    if member is not None and member.state.balance >= 0:
        return _credit_in_one(session, c, tier, locked=True), locked
    return None, locked


def _batch_tiers(
    session: Session, credits: Sequence[Credit], members: Mapping[str, LockedMember]
) -> dict[str, TierBasis]:
    """Each member's tier basis after the batch's credits that count in it."""
    counted = [
        (c, day_of(c.header.occurred_at), signed)
        for c in credits
        if (signed := tier_points_of(c.header.kind, c.points))
    ]
    if not counted:
        return {}
    windows = {c.tier_window_days for c, _, _ in counted}
    window = next(iter(windows))
    invariant(len(windows) == 1 and window is not None and window > 0, "one tier window")
    batch = BatchTiers(
        session,
        {c.member_id: members[c.member_id].tier for c, _, _ in counted},
        cast("int", window),
        [(c.member_id, day) for c, day, _ in counted],
    )
    for c, day, signed in counted:
        batch.add(c.member_id, day, signed)
    return batch.bases


def _write_credits(
    session: Session,
    credits: Sequence[Credit],
    members: Mapping[str, LockedMember],
    tiers: Mapping[str, TierBasis],
) -> list[Posted]:
    """:func:`post_credits`' writes, its members locked and their tier bases computed."""
    balances = {c.member_id: members[c.member_id].state.balance for c in credits}
    owing = {member_id for member_id, balance in balances.items() if balance < 0}
    rows: list[tuple[Any, ...]] = []
    lots: list[tuple[Any, ...]] = []
    one_by_one: list[tuple[Header, tuple[Any, ...], tuple[Any, ...], bool]] = []
    written: list[tuple[Header, int]] = []
    for c in credits:
        header = _between(c.header, members[c.member_id].account_id, c.from_account, to_member=True)
        before = balances[c.member_id]
        balance = balances[c.member_id] = before + c.points
        row = (*_header_values(header), balance)
        lot = (c.member_id, c.origin_partner_id, header.id, c.points, c.points, c.expires_at, False)
        if c.member_id in owing:
            one_by_one.append((header, row, lot, before < 0))
        else:
            rows.append(row)
            lots.append(lot)
        written.append((header, balance))
    if rows:
        _insert_rows(session, _TRANSACTIONS, _TRANSACTION_COLUMNS, rows)
        _insert_rows(session, _LOTS, _LOT_COLUMNS, lots)
    for header, row, lot, owes in one_by_one:
        _insert_rows(session, _TRANSACTIONS, _TRANSACTION_COLUMNS, [row])
        _insert_rows(session, _LOTS, _LOT_COLUMNS, [lot])
        if owes:
            _fill_deficit(session, header.member_id, header.id)
    _change_members(session, balances, members, tiers)
    return [
        Posted(
            txn, MemberState(txn.member_id, txn.balance_after, members[txn.member_id].state.held)
        )
        for txn in _posted_many(session, written)
    ]


def _change_members(
    session: Session,
    balances: Mapping[str, int],
    members: Mapping[str, LockedMember],
    tiers: Mapping[str, TierBasis],
) -> None:
    """Set the members' new balances and tier bases (one statement on PostgreSQL)."""
    changes = []
    for m, balance in sorted(balances.items()):
        tier = tiers.get(m, members[m].tier)
        changes.append(
            {
                "member": m,
                "delta": balance - members[m].state.balance,
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


# The members' new balances and tier bases in one statement on PostgreSQL (arrays).
_CHANGE_MEMBERS_ARRAYS = ("member", "delta", "tier_day", "tier_since_day", "tier_points")
_CHANGE_MEMBERS = text(
    """
    UPDATE members SET balance = members.balance + d.delta, tier_day = d.tier_day,
        tier_since_day = d.tier_since_day, tier_points = d.tier_points
    FROM unnest(CAST(:member AS VARCHAR[]), CAST(:delta AS BIGINT[]),
        CAST(:tier_day AS INTEGER[]), CAST(:tier_since_day AS INTEGER[]),
        CAST(:tier_points AS BIGINT[])) AS d(id, delta, tier_day, tier_since_day, tier_points)
    WHERE members.id = d.id
    """
)
_CHANGE_ONE_MEMBER = text(
    """
    UPDATE members SET balance = balance + :delta, tier_day = :tier_day,
        tier_since_day = :tier_since_day, tier_points = :tier_points
    WHERE id = :member
    """
)


# A debit on PostgreSQL in two statements: first the member row, updated only if it has the
# points available (and so locked), with the transfer; then, in a new statement whose
# snapshot sees every lot change committed before that lock was ours, the points taken from
# the member's open lots soonest-expiring first (``lots._take``, the one statement of that
# rule), each taking recorded as a lot movement.
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


def _debit_in_two(session: Session, header: Header, to_account: int) -> Posted | None:
    """:func:`debit` in two statements on PostgreSQL; ``None`` (nothing written) when the
    member is unknown or has fewer points available."""
    done = _DEBIT_MEMBER.first(session, replace(header, credit_account_id=to_account).row())
    if done is None:
        return None
    balance, held, account = done
    header = _between(header, account, to_account, to_member=False)
    taken = _take(session, header.member_id, header.id, header.points)
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


def reverse_earn(
    session: Session,
    *,
    original: Transaction,
    header: Header,
    to_account: int,
    tier_window_days: int,
) -> Posted:
    """Take back the header's points of an earn (or bonus): its own lot first, then the others.

    When the member has already spent or holds those points, the reversal still happens: the
    member's available goes below zero and ``overdraft_points`` records by how much.
    """
    points, member_id = header.points, original.member_id
    invariant(header.member_id == member_id, f"{header.id} reverses another member's earn")
    state, member_acct = _require_member_change(
        session,
        member_id,
        balance_delta=-points,
        tier=tier_change(header, tier_window_days),
    )
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
