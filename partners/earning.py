"""Earning: a purchase's points, one by one (:meth:`Earning.earn`) or a partner's batch set-based
(:meth:`Earning.earn_many`), through the rate card in force and the member's tier."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import cast

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coalition import ledger
from coalition.errors import (
    CoalitionError,
    DuplicateReference,
    UnknownMember,
    ValidationFailed,
    invariant,
)
from coalition.ledger import Header, Posted
from coalition.models import TransactionKind
from coalition.money import to_minor
from partners.operation_base import (
    _FIND_REFERENCE,
    CLOCK_SKEW,
    OperationBase,
    _check_currency,
    _check_points,
    _check_reference,
    _find_references,
    _money,
    _refuse_reference_used_by,
)
from partners.rates import (
    CardTerms,
    PartnerTerms,
    RateCardHistory,
    active_partner_terms,
    check_worth,
    earn_points,
    partner_terms_with,
    rate_card_history,
    read_terms,
    require_active,
)

#: Items one :meth:`Operations.earn_many` takes at most.
EARN_BATCH_MAX = ledger.BULK_MAX

# What an earn reads, in one statement (:func:`partners.rates.read_terms`).
_EARN_INPUTS = partner_terms_with(ledger.MEMBER_TIER_POINTS, _FIND_REFERENCE.scalar_subquery())


@dataclass(frozen=True, slots=True)
class _Batch:
    """What :meth:`Earning.earn_many` checks its items against (:meth:`Earning._batch`):
    references used (the batch's own added as it goes), the members locked, the partner's
    rate cards, the members' tier basis (the batch's earns added as it goes)."""

    used: dict[str, str]
    members: dict[str, ledger.LockedMember]
    cards: RateCardHistory
    tiers: ledger.BatchTiers


@dataclass(frozen=True, slots=True)
class EarnItem:
    """One purchase of a bulk earn (:meth:`Operations.earn_many`): what :meth:`earn` takes."""

    member_id: str
    reference: str
    amount: str
    currency: str
    occurred_at: datetime | None = None


class Earning(OperationBase):
    """Earn and earn_many."""

    # --- partner operations --------------------------------------------------------------

    def earn(
        self,
        partner_id: str,
        *,
        member_id: str,
        reference: str,
        amount: str,
        currency: str,
        occurred_at: datetime | None = None,
        session: Session | None = None,
    ) -> Posted:
        """Points for a purchase: floor(amount x earn rate x tier multiplier), in a new lot."""
        now = self.clock()
        occurred = self._earn_occurred(reference, occurred_at, now)
        try:
            with self.unit(session) as s:
                # In one statement: the partner and its rate card in force then, the member's
                # tier basis (NULL: no such member) and the reference's earlier use.
                terms, (qualifying, used_by) = read_terms(
                    s,
                    _EARN_INPUTS,
                    {
                        "partner": partner_id,
                        "member": member_id,
                        **ledger.tier_params(
                            ledger.day_of(occurred), self.settings.tier_window_days
                        ),
                        "kind": "earn",
                        "reference": reference,
                    },
                    occurred,
                )
                partner = require_active(terms)
                _check_currency(partner, currency)
                spend = _money(amount, currency, "amount")
                _refuse_reference_used_by(reference, used_by)
                if qualifying is None:
                    raise UnknownMember(f"no member {member_id!r}", member_id=member_id)
                credit = self._earn_credit(
                    partner,
                    partner.card_in_force(),
                    int(qualifying),
                    member_id=member_id,
                    reference=reference,
                    amount=amount,
                    spend=spend,
                    currency=currency,
                    occurred=occurred,
                    now=now,
                )
                return ledger.post(s, [credit])[0]
        except IntegrityError:
            self._raise_duplicate(session, partner_id, "earn", reference)
            raise

    def _earn_occurred(
        self, reference: str, occurred_at: datetime | None, now: datetime
    ) -> datetime:
        """An earn's checks that need no database: its reference and when it occurred."""
        _check_reference(reference)
        occurred = occurred_at or now
        if occurred > now + CLOCK_SKEW:
            raise ValidationFailed.at("occurred_at", "may not be in the future")
        if self._expires_at(occurred) <= now:
            raise ValidationFailed.at("occurred_at", "points earned then would have expired")
        return occurred

    def _earn_credit(
        self,
        partner: PartnerTerms,
        card: CardTerms,
        qualifying: int,
        *,
        member_id: str,
        reference: str,
        amount: str,
        spend: Decimal,
        currency: str,
        occurred: datetime,
        now: datetime,
    ) -> ledger.Credit:
        """The earn's points (tier from ``qualifying``, the card's rate, one floor) and the
        ledger credit that posts them; :class:`ValidationFailed` if it earns no whole point."""
        tier = ledger.tier_for(qualifying, self.settings.tiers)
        points = earn_points(spend, card, tier.multiplier)
        if points < 1:
            raise ValidationFailed.at(
                "amount", f"{amount} {currency} earns no points at the rate in force"
            )
        _check_points(points, "amount")
        check_worth(points, card.issue_price_per_point, "amount")
        return ledger.Credit(
            Header(
                kind=TransactionKind.EARN,
                member_id=member_id,
                points=points,
                occurred_at=occurred,
                posted_at=now,
                partner_id=partner.id,
                reference=reference,
                amount_minor=to_minor(spend, currency),
                currency=currency,
                rate_card_id=card.id,
                tier=tier.name,
            ),
            from_account=partner.issued_account_id,
            origin_partner_id=partner.id,
            expires_at=self._expires_at(occurred),
            tier_window_days=self.settings.tier_window_days,
        )

    def earn_many(
        self, partner_id: str, items: Sequence[EarnItem], *, session: Session | None = None
    ) -> list[Posted | CoalitionError]:
        """Many earns of one partner (its daily file, the demo) in one transaction, set-based.

        The same rules as :meth:`earn` item by item, in order: the same transfers,
        lots and balances as calling it for each item would give (duplicate references also
        within the batch, the rate card in force at each item's ``occurred_at``, the tier of
        its day's window counting the batch's earlier earns). Each item's result is in its
        place: its :class:`Posted`, or the :class:`CoalitionError` :meth:`earn` would raise (and
        nothing of that item is written). A handful of statements serve the whole batch: the
        references already used, the members (locked in id order), the rate cards, the
        members' transactions of the tier days the batch needs, then the writes
        (:func:`ledger.post`, the one path of every credit: ``COPY`` on PostgreSQL;
        a member who owes points has its deficit filled there, as one by one).

        At most :data:`EARN_BATCH_MAX` items (:class:`ValidationFailed` beyond).
        """
        if len(items) > EARN_BATCH_MAX:
            raise ValidationFailed.at("items", f"at most {EARN_BATCH_MAX} items in one batch")
        now = self.clock()
        results: list[Posted | CoalitionError | None] = [None] * len(items)
        occurred: dict[int, datetime] = {}
        for n, item in enumerate(items):
            try:
                occurred[n] = self._earn_occurred(item.reference, item.occurred_at, now)
            except CoalitionError as exc:
                results[n] = exc
        with self.unit(session) as s:
            try:
                partner = active_partner_terms(s, partner_id, now)
            except CoalitionError as exc:
                return [exc if r is None else r for r in results]
            spends: dict[int, Decimal] = {}
            for n in occurred:
                item = items[n]
                try:
                    _check_currency(partner, item.currency)
                    spends[n] = _money(item.amount, item.currency, "amount")
                except CoalitionError as exc:
                    results[n] = exc
            batch = self._batch(s, partner_id, [(items[n], occurred[n]) for n in spends])
            credits: list[tuple[int, ledger.Credit]] = []
            for n, spend in spends.items():
                try:
                    credit = self._batch_item(
                        partner, batch, item=items[n], at=occurred[n], spend=spend, now=now
                    )
                except CoalitionError as exc:
                    results[n] = exc
                    continue
                credits.append((n, credit))
            posted_all = ledger.post(s, [c for _, c in credits], batch.members, batch.tiers.bases)
            for (n, _), posted in zip(credits, posted_all, strict=True):
                results[n] = posted
        invariant(all(r is not None for r in results), "every item has its result")
        return cast("list[Posted | CoalitionError]", results)

    def _batch(
        self, s: Session, partner_id: str, items: Sequence[tuple[EarnItem, datetime]]
    ) -> _Batch:
        """What a batch's items are checked against, read in a handful of statements: the
        references already used, the members (locked in id order), the rate cards and the tier
        days the batch needs. Items whose reference was used already are duplicates whatever
        else they say: no member lock, no tier history for them (a file imported again costs
        one lookup)."""
        used = _find_references(s, partner_id, "earn", [item.reference for item, _ in items])
        fresh = [(item, at) for item, at in items if item.reference not in used]
        members = ledger.lock_members(s, (item.member_id for item, _ in fresh))
        tiers = ledger.BatchTiers(
            s,
            {m: locked.tier for m, locked in members.items()},
            self.settings.tier_window_days,
            [(item.member_id, ledger.day_of(at)) for item, at in fresh],
        )
        return _Batch(used, members, rate_card_history(s, partner_id), tiers)

    def _batch_item(
        self,
        partner: PartnerTerms,
        batch: _Batch,
        *,
        item: EarnItem,
        at: datetime,
        spend: Decimal,
        now: datetime,
    ) -> ledger.Credit:
        """One item of :meth:`earn_many`: its credit, to post with the batch's; raises what
        :meth:`earn` would."""
        if item.reference in batch.used:
            existing = batch.used[item.reference]
            raise DuplicateReference(
                f"reference {item.reference!r} was already used by {existing}",
                transaction_id=existing,
            )
        if item.member_id not in batch.members:
            raise UnknownMember(f"no member {item.member_id!r}", member_id=item.member_id)
        day = ledger.day_of(at)
        credit = self._earn_credit(
            partner,
            batch.cards.at(at),
            batch.tiers.at(item.member_id, day),
            member_id=item.member_id,
            reference=item.reference,
            amount=item.amount,
            spend=spend,
            currency=item.currency,
            occurred=at,
            now=now,
        )
        batch.used[item.reference] = credit.header.id
        batch.tiers.add(item.member_id, day, credit.points)
        return credit
