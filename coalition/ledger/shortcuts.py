"""The one-statement forms of a batch of one on PostgreSQL (data-modifying CTEs): a credit of
a member who owes nothing, a plain debit (two statements: the member row with the transfer,
then the lots), a hold placed, and a hold voided (:func:`void_in_one`, found by its id). Each
writes exactly the rows :func:`coalition.ledger.batch.post` writes for the same movement, or
nothing (``None``): the batch path then posts it. Each is conditional on the member row: on
what the batch path decides from the row it locked (a debit or a hold needs the points
available, ``_COVERED``; a credit's member owes nothing; its tier basis reads no
transaction), so when the condition fails nothing is written and the batch path decides."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Boolean, bindparam, or_, text, update
from sqlalchemy import cast as sa_cast
from sqlalchemy.orm import Session

from coalition.db import dialect_of
from coalition.errors import invariant
from coalition.hot import HotStatement, named_sql
from coalition.ledger.lots import _take
from coalition.ledger.post import (
    CloseHold,
    Credit,
    Debit,
    Header,
    LockedMember,
    Movement,
    PlaceHold,
    _between,
    _holds_closed,
    _posted,
    lock_members,
    tier_change,
)
from coalition.ledger.reads import HoldPosted, MemberState, Posted
from coalition.ledger.riders import arrived, boarding
from coalition.ledger.tables import _MEMBERS
from coalition.ledger.tiers import TIER_WRITE_WITHOUT_READ, tier_values
from coalition.models import Hold, HoldStatus


def shortcut(
    session: Session, movement: Movement
) -> tuple[Posted | HoldPosted | None, dict[str, LockedMember] | None]:
    """The movement in its one-statement form (PostgreSQL): posted, or ``None`` and the
    member's row if it was locked on the way (a new day's tier window reads the member's
    transactions: under the lock)."""
    if isinstance(movement, PlaceHold):
        return _place_in_one(session, movement), None
    if isinstance(movement, CloseHold):
        return None, None
    if isinstance(movement, Debit):
        if not movement.plain:
            return None, None
        return _debit_in_two(session, movement.header, movement.to_account), None
    c = movement
    if c.restores is not None:
        return None, None
    tier = tier_change(c.header, c.tier_window_days)
    posted = _credit_in_one(session, c, tier, locked=False)
    if posted is not None or tier is None:
        return posted, None
    locked = lock_members(session, [c.member_id])
    member = locked.get(c.member_id)
    if member is not None and member.state.balance >= 0:
        return _credit_in_one(session, c, tier, locked=True), locked
    return None, locked


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


def _credit_ctes(tier: bool) -> tuple[dict[str, Any], str]:
    """The credit's CTEs (``WITH m ..., t ..., l ...``) and the values they bind themselves."""
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
    return (
        fixed,
        f"""
    WITH m AS ({member_sql}
    ), t AS ({_TRANSACTION_FROM_MEMBER}
    ), l AS (
        INSERT INTO lots (member_id, origin_partner_id, transaction_id, points, remaining,
            expires_at, is_deficit)
        SELECT :member_id, :origin_partner_id, t.id, :points, :points, :expires_at, false
        FROM t
    )""",  # noqa: S608 (built from constants)
    )


_CREDIT = {tier: _credit_ctes(tier) for tier in (False, True)}
#: What a one-statement transfer returns: the member row after it.
_MEMBER_AFTER = " SELECT balance, held, account_id FROM m"

#: The one-statement transfers, by (their CTEs, their riders' CTEs): each built once.
_CARRYING: dict[tuple[str, str], HotStatement] = {}


def _carrying(ctes: str, riders: str) -> HotStatement:
    """The statement of a transfer's ``ctes`` and ``riders`` (:mod:`coalition.ledger.riders`),
    returning the member row after it."""
    statement = _CARRYING.get((ctes, riders))
    if statement is None:
        sql = f"{ctes}, {riders}{_MEMBER_AFTER}" if riders else f"{ctes}{_MEMBER_AFTER}"
        statement = _CARRYING[ctes, riders] = HotStatement(text(sql))
    return statement


def _written(session: Session, header: Header, ctes: str, params: dict[str, Any]) -> Any | None:
    """The member row after the statement of ``ctes`` wrote ``header``'s transfer, with the
    riders waiting for it (:mod:`coalition.ledger.riders`), which are then carried; ``None``
    when it wrote nothing, and they still wait."""
    riders, values, aboard = boarding(session, header)
    done = _carrying(ctes, riders).first(session, {**params, **values})
    if done is not None:
        arrived(session, header, aboard)
    return done


def _credit_in_one(
    session: Session, c: Credit, tier: dict[str, Any] | None, *, locked: bool
) -> Posted | None:
    """A credit in one statement on PostgreSQL, with its riders; ``None`` (nothing written)
    when the member is unknown or owes points, or its tier basis needs the row locked first."""
    fixed, ctes = _CREDIT[tier is not None]
    params = {
        **fixed,
        **c.header.row(),
        "debit_account_id": c.from_account,
        "origin_partner_id": c.origin_partner_id,
        "expires_at": c.expires_at,
    }
    if tier is not None:
        params.update(tier)
        params["locked"] = locked
    done = _written(session, c.header, ctes, params)
    if done is None:
        return None
    balance, held, account = done
    header = _between(c.header, account, c.from_account, to_member=True)
    txn = _posted(session, header, balance)
    return Posted(txn, MemberState(c.header.member_id, balance, held))


#: The member row has ``:points`` available: what a debit that may not overdraw and a hold
#: need (``batch._require_available`` on the row locked), as the condition of their
#: one-statement forms.
_COVERED = "members.balance - members.held >= :points"

# A debit on PostgreSQL in two statements: first the member row, updated only if it has the
# points available (and so locked), with the transfer; then, in a new statement whose
# snapshot sees every lot change committed before that lock was ours, the points taken from
# the member's open lots soonest-expiring first (``lots._take``, the one statement of that
# rule), each taking recorded as a lot movement.
_DEBIT_MEMBER = f"""
    WITH m AS (
        UPDATE members SET balance = balance - :points
        WHERE id = :member_id AND {_COVERED}
        RETURNING balance, held, account_id
    ), t AS ({_TRANSACTION_FROM_MEMBER}
    )"""  # noqa: S608 (built from constants)


def _debit_in_two(session: Session, header: Header, to_account: int) -> Posted | None:
    """A plain debit in two statements on PostgreSQL, the first with its riders; ``None``
    (nothing written) when the member is unknown or has fewer points available."""
    params = {**header.row(), "credit_account_id": to_account}
    done = _written(session, header, _DEBIT_MEMBER, params)
    if done is None:
        return None
    balance, held, account = done
    header = _between(header, account, to_account, to_member=False)
    taken = _take(session, header.member_id, header.id, header.points)
    # available >= points and balance = sum(lots) > 0 means the lots cover it.
    invariant(taken == header.points, f"{header.id}: lots gave {taken} of {header.points}")
    txn = _posted(session, header, balance)
    return Posted(txn, MemberState(header.member_id, balance, held))


# A hold placed in one statement: the member row's held points, if it has them available
# (and so locked), and the hold's row.
_PLACE_IN_ONE = HotStatement(
    text(
        f"""
    WITH m AS (
        UPDATE members SET held = members.held + :points
        WHERE id = :member_id AND {_COVERED}
        RETURNING balance, held
    ), h AS (
        INSERT INTO holds (id, partner_id, member_id, reference, points, status, expires_at,
            created_at)
        SELECT :id, :partner_id, :member_id, :reference, :points, 'active', :expires_at, :at
        FROM m
    )
    SELECT balance, held FROM m
    """  # noqa: S608 (built from constants)
    )
)


def _place_in_one(session: Session, place: PlaceHold) -> HoldPosted | None:
    """A hold placed in one statement on PostgreSQL; ``None`` (nothing written) when the
    member is unknown or has fewer points available."""
    params = {
        "id": place.id,
        "partner_id": place.partner_id,
        "member_id": place.member_id,
        "reference": place.reference,
        "points": place.points,
        "expires_at": place.expires_at,
        "at": place.at,
    }
    done = _PLACE_IN_ONE.first(session, params)
    if done is None:
        return None
    balance, held = done
    return HoldPosted(place.hold(), MemberState(place.member_id, balance, held))


# A void in one statement: the partner's hold, if active and not past its expiry, closed (and
# so locked, before the member row, as the batch path's caller locks them), and its points
# released on the member row.
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
) -> HoldPosted | None:
    """Void the partner's active hold in one statement on PostgreSQL (the
    :class:`CloseHold` of a hold found by its id, as the batch path writes it): the hold as
    closed and the member after it; ``None`` (nothing written) elsewhere, or when the hold is
    not the partner's, not active or past its expiry (the caller then reads it, says which,
    or posts its :class:`CloseHold`)."""
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
        status=HoldStatus.ACTIVE.value,
        expires_at=expires_at.astimezone(UTC),
        created_at=created_at.astimezone(UTC),
        closed_at=None,
        captured_points=None,
    )
    close = CloseHold(hold, HoldStatus.VOIDED, now)
    _holds_closed(session, [close])
    return HoldPosted(close.closed(), MemberState(member_id, balance, held))
