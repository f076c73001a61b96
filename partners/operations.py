"""The operations partners (and the operator) perform, each one short database transaction.

:class:`Operations` is the one door to the ledger for the API, the jobs, the demo and the
tests: a thin façade over the areas, each in its module (:mod:`partners.earning`,
:mod:`partners.spending`, :mod:`partners.corrections`, on :mod:`partners.operation_base`), plus
members and their balance here. Each method validates its input, turns money into points
through the rate card in force, and posts to the ledger; a
:class:`~coalition.errors.CoalitionError` means nothing changed. Passing ``session=`` runs the
operation inside the caller's transaction (under a savepoint, unless the caller rolls its whole
transaction back on error), which is the batched path the demo and bulk imports use.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coalition import ledger
from coalition.config import Tier
from coalition.db import owns_rollback
from coalition.errors import (
    CoalitionError,
    ValidationFailed,
)
from coalition.hot import Prelude
from coalition.ids import MEMBER_ID_RULE, is_member_id
from partners.corrections import JOB_BATCHES_PER_RUN, Corrections
from partners.earning import EARN_BATCH_MAX, Earning, EarnItem
from partners.spending import HoldResult, Spending


@dataclass(frozen=True, slots=True)
class Balance:
    """What a member has, in plain terms."""

    member_id: str
    available: int
    held: int
    tier: str
    expiring: list[tuple[int, datetime]]
    #: The points the tier is decided by (over the trailing window), and the next tier up
    #: with the points it needs (None at the top).
    qualifying_points: int = 0
    next_tier: Tier | None = None


class Operations(Earning, Spending, Corrections):
    """Earn, burn, hold, capture, void, reverse, bonus, adjust, the expiry jobs, and members."""

    # --- members -------------------------------------------------------------------------

    def create_member(
        self, member_id: str | None = None, *, session: Session | None = None
    ) -> tuple[str, bool]:
        """Create a member (optionally with the caller's ``mem_`` id); (id, created)."""
        if member_id is not None and not is_member_id(member_id):
            raise ValidationFailed.at("member_id", MEMBER_ID_RULE)
        try:
            with self.unit(session) as s:
                return ledger.create_member(s, member_id, self.clock())
        except IntegrityError:
            # Two creations of one id raced; the other one made it.
            if member_id is None or owns_rollback(session):
                raise
            return member_id, False

    def balance(
        self,
        member_id: str,
        *,
        session: Session | None = None,
        prelude: Prelude | None = None,
        alone: bool = False,
    ) -> Balance:
        """Available and held points, tier and upcoming expiries of a member; after the
        ``prelude``'s write (the request's nonce), in the same round trip on PostgreSQL.
        ``alone`` (PostgreSQL, no ``session``): that one statement is its own transaction
        (:meth:`~coalition.hot.HotStatement.alone`)."""
        now = self.clock()
        window_days = self.settings.tier_window_days
        if alone:
            snapshot, expiring = ledger.balance_read(
                self.engine, member_id, window_days=window_days, now=now, prelude=prelude
            )
        else:
            with self.reading(session) as s:
                snapshot, expiring = ledger.balance_read(
                    s, member_id, window_days=window_days, now=now, prelude=prelude
                )
        tier = ledger.tier_for(snapshot.qualifying_points, self.settings.tiers)
        # Read as the member's next burn would see it: holds past their expiry released, then
        # points past their date expired (never more than is available, as the job does).
        held = snapshot.state.held - snapshot.overdue_held
        available = snapshot.state.balance - held
        available -= min(snapshot.overdue_points, max(available, 0))
        higher = [t for t in self.settings.tiers if t.threshold_points > tier.threshold_points]
        return Balance(
            member_id,
            available,
            held,
            tier.name,
            expiring,
            qualifying_points=snapshot.qualifying_points,
            next_tier=higher[0] if higher else None,
        )


__all__ = [
    "EARN_BATCH_MAX",
    "JOB_BATCHES_PER_RUN",
    "Balance",
    "CoalitionError",
    "EarnItem",
    "HoldResult",
    "Operations",
]
