"""The points ledger: double-entry transactions, lots, holds and expiry.

Every function here runs inside a database transaction the caller owns and changes nothing
when it raises a :class:`~coalition.errors.CoalitionError` before its first write. Every write
that touches a member starts by locking the member's row (``FOR UPDATE``, or the update of a
one-statement form), which serializes all changes to one member's balance and lots on
PostgreSQL; SQLite has one writer anyway. Every movement is posted by one function,
:func:`post` (``batch``): a batch of transfers (:class:`Credit`, :class:`Debit`) and holds
placed and closed (:class:`PlaceHold`, :class:`CloseHold`), one or thousands.

The rules, in the words of docs/recipes.md:
- a credit (earn, bonus, positive adjustment, burn reversal) adds a lot, or restores the lots a
  burn took, and first fills any clawback deficit;
- a debit (burn, capture, negative adjustment, earn reversal, expiry) takes points from lots
  soonest-expiring first and records each lot it touched;
- only a capture or an earn reversal may take more than the lots hold: the rest becomes the
  member's deficit, which the next credit fills.

The package: ``kinds`` (what each kind of transfer means), ``post`` (a transfer's header, the
movements, the member rows, the bulk insert), ``batch`` (the one write path), ``shortcuts``
(a batch of one in one or two statements on PostgreSQL), ``operations`` (the reversals),
``lots``, ``holds``, ``expiry``, ``tiers`` (the tier basis, declared once as ``terms`` and
evaluated as SQL and as Python), ``reads`` (a member's balance and what is due) and
``tables``, ``listeners`` (what the layers above hear of each posting) and ``riders``
(what they write in the statement of a posting). Its public
names are all here.
"""

from __future__ import annotations

from coalition.ledger.batch import post
from coalition.ledger.expiry import (
    expire_lots,
    members_with_expired_lots,
)
from coalition.ledger.holds import (
    capture_hold,
    due_holds,
    expire_holds,
    lock_hold,
    member_due_holds,
)
from coalition.ledger.operations import (
    lock_transaction,
    reverse_burn,
    reverse_earn,
    reversed_points,
)
from coalition.ledger.post import (
    CloseHold,
    Credit,
    Debit,
    Header,
    LockedMember,
    PlaceHold,
    create_member,
    lock_members,
)
from coalition.ledger.reads import (
    EXPIRING_DATES,
    MEMBER_DUE_HOLDS,
    MEMBER_DUE_LOTS,
    HoldPosted,
    MemberSnapshot,
    MemberState,
    Posted,
    balance_read,
    expiring_lots,
    member_due,
    member_snapshot,
    member_state,
)
from coalition.ledger.riders import Rider, alight, ride
from coalition.ledger.shortcuts import void_in_one
from coalition.ledger.tables import BULK_MAX, EXPIRY_BATCH
from coalition.ledger.tiers import (
    MEMBER_TIER_POINTS,
    BatchTiers,
    TierBasis,
    day_of,
    qualifying_points,
    tier_for,
    tier_params,
)

__all__ = [
    "BULK_MAX",
    "EXPIRING_DATES",
    "EXPIRY_BATCH",
    "MEMBER_DUE_HOLDS",
    "MEMBER_DUE_LOTS",
    "MEMBER_TIER_POINTS",
    "BatchTiers",
    "CloseHold",
    "Credit",
    "Debit",
    "Header",
    "HoldPosted",
    "LockedMember",
    "MemberSnapshot",
    "MemberState",
    "PlaceHold",
    "Posted",
    "Rider",
    "TierBasis",
    "alight",
    "balance_read",
    "capture_hold",
    "create_member",
    "day_of",
    "due_holds",
    "expire_holds",
    "expire_lots",
    "expiring_lots",
    "lock_hold",
    "lock_members",
    "lock_transaction",
    "member_due",
    "member_due_holds",
    "member_snapshot",
    "member_state",
    "members_with_expired_lots",
    "post",
    "qualifying_points",
    "reverse_burn",
    "reverse_earn",
    "reversed_points",
    "ride",
    "tier_for",
    "tier_params",
    "void_in_one",
]
