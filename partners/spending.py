"""Spending: burns, and holds with their capture and void."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coalition import ledger
from coalition.db import owns_rollback
from coalition.errors import (
    DuplicateReference,
    HoldNotActive,
    NotFound,
    UnknownMember,
    ValidationFailed,
)
from coalition.ledger import Header, MemberState, Posted
from coalition.models import Hold, HoldStatus, TransactionKind
from partners.operation_base import (
    _FIND_REFERENCE,
    OperationBase,
    _check_currency,
    _check_points,
    _check_reference,
    _money,
    _refuse_reference_used_by,
)
from partners.rates import (
    burn_price,
    partner_terms,
    partner_terms_with,
    read_terms,
    require_active,
)

_HOLDS = cast("Table", Hold.__table__)
_HOLD_INPUTS = partner_terms_with(
    select(_HOLDS.c.id)
    .where(_HOLDS.c.partner_id == bindparam("partner"), _HOLDS.c.reference == bindparam("ref"))
    .scalar_subquery(),
    ledger.MEMBER_DUE_LOTS,
    ledger.MEMBER_DUE_HOLDS,
)
_BURN_INPUTS = partner_terms_with(
    ledger.MEMBER_DUE_LOTS, ledger.MEMBER_DUE_HOLDS, _FIND_REFERENCE.scalar_subquery()
)


@dataclass(frozen=True, slots=True)
class HoldResult:
    """A hold and the member's balance after the operation on it."""

    hold: Hold
    member: MemberState


class Spending(OperationBase):
    """Burn, hold, capture, void."""

    def burn(
        self,
        partner_id: str,
        *,
        member_id: str,
        reference: str,
        points: int | None = None,
        amount: str | None = None,
        currency: str | None = None,
        basket_amount: str | None = None,
        session: Session | None = None,
    ) -> Posted:
        """Spend points at the partner, given points or an amount to pay (ceil)."""
        _check_reference(reference)
        if (points is None) == (amount is None):
            raise ValidationFailed.at("", "give either points or amount and currency")
        if points is not None:
            _check_points(points)
        if amount is not None and currency is None:
            raise ValidationFailed.at("currency", "required with amount")
        now = self.clock()
        try:
            with self.unit(session) as s:
                # In one statement: the partner and its card in force, the member's due work
                # (NULL: no such member) and the reference's earlier use.
                terms, (due_lots, due_holds, used_by) = read_terms(
                    s,
                    _BURN_INPUTS,
                    {
                        "partner": partner_id,
                        "member": member_id,
                        "now": now,
                        "kind": "burn",
                        "reference": reference,
                    },
                    now,
                )
                partner = require_active(terms)
                if currency is not None:
                    _check_currency(partner, currency)
                spend = _money(amount, partner.currency, "amount") if amount else None
                basket = (
                    _money(basket_amount, partner.currency, "basket_amount")
                    if basket_amount is not None
                    else None
                )
                _refuse_reference_used_by(reference, used_by)
                if due_lots is None or due_holds is None:
                    raise UnknownMember(f"no member {member_id!r}", member_id=member_id)
                due = (int(due_lots), int(due_holds))
                card = partner.card_in_force()
                price = burn_price(
                    card, partner.currency, points=points, amount=spend, basket_amount=basket
                )
                self._settle_due(s, member_id, now, due)
                header = Header(
                    kind=TransactionKind.BURN,
                    member_id=member_id,
                    points=price.points,
                    occurred_at=now,
                    posted_at=now,
                    partner_id=partner_id,
                    reference=reference,
                    amount_minor=price.amount_minor,
                    currency=partner.currency,
                    rate_card_id=card.id,
                )
                debit = ledger.Debit(header, to_account=partner.redeemed_account_id)
                return ledger.post(s, [debit])[0]
        except IntegrityError:
            self._raise_duplicate(session, partner_id, "burn", reference)
            raise

    def hold(
        self,
        partner_id: str,
        *,
        member_id: str,
        reference: str,
        points: int,
        expires_in: int | None = None,
        session: Session | None = None,
    ) -> HoldResult:
        """Reserve points at checkout, to capture or void later; they expire unless captured."""
        _check_reference(reference)
        _check_points(points)
        seconds = self.settings.hold_default_expiry_s if expires_in is None else expires_in
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int)
            or not 0 < seconds <= self.settings.hold_max_expiry_s
        ):
            raise ValidationFailed.at(
                "expires_in", f"seconds from 1 to {self.settings.hold_max_expiry_s}"
            )
        now = self.clock()
        try:
            with self.unit(session) as s:
                # In one statement: the partner and its card in force, the reference's earlier
                # hold, and the member's due work (NULL: no such member).
                terms, (existing, due_lots, due_holds) = read_terms(
                    s,
                    _HOLD_INPUTS,
                    {"partner": partner_id, "member": member_id, "now": now, "ref": reference},
                    now,
                )
                partner = require_active(terms)
                if existing is not None:
                    raise DuplicateReference(
                        f"reference {reference!r} was already used by {existing}", hold_id=existing
                    )
                if due_lots is None or due_holds is None:
                    raise UnknownMember(f"no member {member_id!r}", member_id=member_id)
                due = (int(due_lots), int(due_holds))
                partner.card_in_force()
                self._settle_due(s, member_id, now, due)
                place = ledger.PlaceHold(
                    partner_id=partner_id,
                    member_id=member_id,
                    reference=reference,
                    points=points,
                    expires_at=now + timedelta(seconds=seconds),
                    at=now,
                )
                (placed,) = ledger.post(s, [place])
                return HoldResult(placed.hold, placed.member)
        except IntegrityError:
            if owns_rollback(session):
                raise
            with self.unit(session) as s:
                existing = s.scalar(
                    select(Hold.id).where(
                        Hold.partner_id == partner_id, Hold.reference == reference
                    )
                )
            if existing is None:
                raise
            raise DuplicateReference(
                f"reference {reference!r} was already used by {existing}", hold_id=existing
            ) from None

    def get_hold(self, partner_id: str, hold_id: str, *, session: Session | None = None) -> Hold:
        """The partner's hold (another partner's is not found)."""
        with self.reading(session) as s:
            hold = s.scalars(
                select(Hold).where(Hold.id == hold_id, Hold.partner_id == partner_id)
            ).first()
            if hold is None:
                raise NotFound(f"no hold {hold_id!r}")
            s.expunge(hold)
            return hold

    def _active_hold(self, s: Session, partner_id: str, hold_id: str, now: datetime) -> Hold:
        hold = ledger.lock_hold(s, hold_id, partner_id)
        if hold is None:
            raise NotFound(f"no hold {hold_id!r}")
        if hold.status != "active":
            raise HoldNotActive(f"hold {hold_id} is {hold.status}", status=hold.status)
        if hold.expires_at <= now:
            raise HoldNotActive(
                f"hold {hold_id} expired at {hold.expires_at.isoformat()}", status="expired"
            )
        return hold

    def capture(
        self,
        partner_id: str,
        hold_id: str,
        *,
        points: int | None = None,
        session: Session | None = None,
    ) -> Posted:
        """Burn the held points (or fewer: the rest is released)."""
        if points is not None:
            _check_points(points)
        now = self.clock()
        with self.unit(session) as s:
            hold = self._active_hold(s, partner_id, hold_id, now)
            take = hold.points if points is None else points
            if take > hold.points:
                raise ValidationFailed.at("points", f"at most the held {hold.points} points")
            partner = partner_terms(s, partner_id, now)
            card = partner.card_in_force()
            price = burn_price(card, partner.currency, points=take, amount=None, basket_amount=None)
            return ledger.capture_hold(
                s,
                hold=hold,
                header=Header(
                    kind=TransactionKind.BURN,
                    member_id=hold.member_id,
                    points=take,
                    occurred_at=now,
                    posted_at=now,
                    partner_id=partner_id,
                    reference=hold.reference,
                    amount_minor=price.amount_minor,
                    currency=partner.currency,
                    rate_card_id=card.id,
                    hold_id=hold.id,
                ),
                to_account=partner.redeemed_account_id,
                now=now,
            )

    def void(self, partner_id: str, hold_id: str, *, session: Session | None = None) -> HoldResult:
        """Release an active hold's points."""
        now = self.clock()
        with self.unit(session) as s:
            voided = ledger.void_in_one(s, hold_id=hold_id, partner_id=partner_id, now=now)
            if voided is None:
                hold = self._active_hold(s, partner_id, hold_id, now)
                (voided,) = ledger.post(s, [ledger.CloseHold(hold, HoldStatus.VOIDED, now)])
            return HoldResult(voided.hold, voided.member)
