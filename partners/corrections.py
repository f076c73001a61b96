"""Corrections and time: reversals of earns and burns, the operator's bonuses and adjustments,
and the expiry jobs."""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coalition import ledger
from coalition.db import transaction
from coalition.errors import (
    NotFound,
    ReversalExceedsOriginal,
    ValidationFailed,
)
from coalition.ledger import Header, Posted
from coalition.models import OPERATOR_ACCOUNTS, Transaction, TransactionKind
from partners.operation_base import (
    OperationBase,
    _check_points,
    _check_reason,
    _check_reference,
)
from partners.rates import (
    check_worth,
    partner_terms,
)

#: Batches one run of an expiry job handles at most (each its own transaction of
#: :data:`coalition.ledger.EXPIRY_BATCH`): a run ends in bounded time, the next takes the rest.
JOB_BATCHES_PER_RUN = 40


class Corrections(OperationBase):
    """Reverse, bonus, adjust, and the expiry jobs."""

    def reverse(
        self,
        partner_id: str,
        txn_id: str,
        *,
        reference: str,
        points: int | None = None,
        session: Session | None = None,
    ) -> Posted:
        """Reverse an earn or a burn of the partner, fully or in part, never beyond what is left."""
        _check_reference(reference)
        if points is not None:
            _check_points(points)
        now = self.clock()
        kind = "?"
        try:
            with self.unit(session) as s:
                original = ledger.lock_transaction(s, txn_id)
                if original is None or original.partner_id != partner_id:
                    raise NotFound(f"no transaction {txn_id!r}")
                if original.kind not in ("earn", "burn"):
                    raise ValidationFailed.at("", f"a {original.kind} cannot be reversed")
                kind = (
                    TransactionKind.EARN_REVERSAL
                    if original.kind == TransactionKind.EARN
                    else TransactionKind.BURN_REVERSAL
                )
                partner = partner_terms(s, partner_id, now)
                self._refuse_used_reference(s, partner_id, kind, reference)
                done = ledger.reversed_points(s, txn_id)
                left = original.points - done
                take = left if points is None else points
                if take > left or left == 0:
                    raise ReversalExceedsOriginal(
                        f"{txn_id} has {left} of {original.points} points left to reverse",
                        remaining_points=left,
                    )
                header = Header(
                    kind=kind,
                    member_id=original.member_id,
                    points=take,
                    occurred_at=now,
                    posted_at=now,
                    partner_id=partner_id,
                    reference=reference,
                    currency=original.currency,
                    amount_minor=self._reversal_amount(s, original, take, left),
                    rate_card_id=original.rate_card_id,
                    reverses=original.id,
                )
                if kind == TransactionKind.EARN_REVERSAL:
                    return ledger.reverse_earn(
                        s,
                        original=original,
                        header=header,
                        to_account=partner.issued_account_id,
                        tier_window_days=self.settings.tier_window_days,
                    )
                return ledger.reverse_burn(
                    s,
                    original=original,
                    header=header,
                    from_account=partner.redeemed_account_id,
                    expires_at=self._expires_at(now),
                )
        except IntegrityError:
            self._raise_duplicate(session, partner_id, kind, reference)
            raise

    @staticmethod
    def _reversal_amount(s: Session, original: Transaction, take: int, left: int) -> int | None:
        """The money a reversal stands for: pro rata, the last one taking the exact remainder."""
        if original.amount_minor is None:
            return None
        if take == left:
            prior = s.scalar(
                select(func.coalesce(func.sum(Transaction.amount_minor), 0)).where(
                    Transaction.reverses == original.id
                )
            )
            return original.amount_minor - int(prior or 0)
        share = Decimal(original.amount_minor) * take / original.points
        return int(share.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))

    def get_transaction(
        self, partner_id: str | None, txn_id: str, *, session: Session | None = None
    ) -> Transaction:
        """A transaction; a partner sees only its own (``partner_id=None``: the operator)."""
        with self.reading(session) as s:
            txn = s.get(Transaction, txn_id)
            if txn is None or (partner_id is not None and txn.partner_id != partner_id):
                raise NotFound(f"no transaction {txn_id!r}")
            s.expunge(txn)
            return txn

    # --- operator operations -------------------------------------------------------------

    def bonus(
        self,
        *,
        member_id: str,
        points: int,
        reason: str,
        funded_by: str,
        session: Session | None = None,
    ) -> Posted:
        """Points for an action (sign-up, referral...), funded by a partner (billed like an
        earn, at its issue price) or by the coalition."""
        _check_points(points)
        reason = _check_reason(reason)
        now = self.clock()
        with self.unit(session) as s:
            ledger.member_state(s, member_id)
            partner_id: str | None = None
            card_id: str | None = None
            from_account = OPERATOR_ACCOUNTS["operator_bonus"]
            if funded_by != "coalition":
                try:
                    partner = partner_terms(s, funded_by, now)
                except NotFound:
                    raise ValidationFailed.at("funded_by", "a partner id or 'coalition'") from None
                partner_id, from_account = partner.id, partner.issued_account_id
                card = partner.card_in_force()
                check_worth(points, card.issue_price_per_point, "points")
                card_id = card.id
            return ledger.post(
                s,
                [
                    ledger.Credit(
                        Header(
                            kind=TransactionKind.BONUS,
                            member_id=member_id,
                            points=points,
                            occurred_at=now,
                            posted_at=now,
                            partner_id=partner_id,
                            rate_card_id=card_id,
                            reason=reason,
                        ),
                        from_account=from_account,
                        origin_partner_id=partner_id,
                        expires_at=self._expires_at(now),
                    ),
                ],
            )[0]

    def adjust(
        self, *, member_id: str, points: int, reason: str, session: Session | None = None
    ) -> Posted:
        """An operator's correction of a member's balance (+ adds a lot, - spends available)."""
        if isinstance(points, bool) or not isinstance(points, int) or points == 0:
            raise ValidationFailed.at("points", "a non-zero whole number")
        _check_points(abs(points))
        reason = _check_reason(reason)
        now = self.clock()
        header = Header(
            kind=TransactionKind.ADJUSTMENT,
            member_id=member_id,
            points=abs(points),
            occurred_at=now,
            posted_at=now,
            reason=reason,
        )
        account = OPERATOR_ACCOUNTS["operator_adjustment"]
        with self.unit(session) as s:
            ledger.member_state(s, member_id)
            if points > 0:
                credit = ledger.Credit(
                    header,
                    from_account=account,
                    origin_partner_id=None,
                    expires_at=self._expires_at(now),
                )
                return ledger.post(s, [credit])[0]
            self._settle_due(s, member_id, now)
            return ledger.post(s, [ledger.Debit(header, to_account=account)])[0]

    # --- jobs ----------------------------------------------------------------------------

    def expire_holds(self, now: datetime | None = None) -> int:
        """Release active holds past their expiry, at most :data:`JOB_BATCHES_PER_RUN`
        batches (the next run takes the rest); returns how many."""
        at = now or self.clock()
        count = 0
        for _ in range(JOB_BATCHES_PER_RUN):
            with transaction(self.sessions) as s:
                holds = ledger.due_holds(s, at)
                ledger.expire_holds(s, holds, at)
            count += len(holds)
            if len(holds) < ledger.EXPIRY_BATCH:
                break
        return count

    def expire_points(self, now: datetime | None = None) -> int:
        """Expire lots past their date (breakage), at most :data:`JOB_BATCHES_PER_RUN`
        batches of members (the next run takes the rest); returns the expiry transactions
        written."""
        at = now or self.clock()
        count = 0
        after: str | None = None
        for _ in range(JOB_BATCHES_PER_RUN):
            with transaction(self.sessions) as s:
                members = ledger.members_with_expired_lots(s, at, after)
                count += len(ledger.expire_lots(s, members, at))
            if len(members) < ledger.EXPIRY_BATCH:
                break
            after = members[-1]
        return count
