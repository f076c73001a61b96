"""The operations partners (and the operator) perform, each one short database transaction.

:class:`Operations` is the one door to the ledger for the API, the jobs, the demo and the
tests. Each method validates its input, turns money into points through the rate card in
force, and posts to the ledger; a :class:`~coalition.errors.CoalitionError` means nothing
changed. Passing ``session=`` runs the operation inside the caller's transaction (under a
savepoint), which is the batched path the demo and bulk imports use.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import cast

from sqlalchemy import Table, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from coalition import ledger
from coalition.config import Settings
from coalition.db import owns_rollback, transaction, utcnow
from coalition.errors import (
    CoalitionError,
    CurrencyMismatch,
    DuplicateReference,
    HoldNotActive,
    NotFound,
    ReversalExceedsOriginal,
    UnknownMember,
    ValidationFailed,
)
from coalition.ids import MEMBER_ID_RULE, is_member_id
from coalition.ledger import Header, MemberState, Posted
from coalition.models import OPERATOR_ACCOUNTS, Hold, HoldStatus, Transaction, TransactionKind
from coalition.money import MAX_POINTS, MoneyError, exponent, parse_amount, to_minor
from partners.rates import (
    CardTerms,
    PartnerTerms,
    active_partner_terms,
    burn_price,
    earn_points,
    partner_terms,
    partner_terms_with,
    rate_card_history,
    read_terms,
    require_active,
)

REFERENCE_RE = re.compile(r"[\x21-\x7e]{1,255}")
#: How far ahead of the server's clock an ``occurred_at`` may be (clock skew).
CLOCK_SKEW = timedelta(minutes=5)
REASON_MAX = 500
#: Batches one run of an expiry job handles at most (each its own transaction of
#: :data:`coalition.ledger.EXPIRY_BATCH`): a run ends in bounded time, the next takes the rest.
JOB_BATCHES_PER_RUN = 40
#: Items one :meth:`Operations.earn_many` takes at most.
EARN_BATCH_MAX = ledger.BULK_MAX

_TRANSACTIONS = cast("Table", Transaction.__table__)
# Pre-built, as the ledger's hot path (docs/benchmarks.md).
_REFERENCE_CONDITIONS = (
    _TRANSACTIONS.c.partner_id == bindparam("partner"),
    _TRANSACTIONS.c.kind == bindparam("kind"),
    _TRANSACTIONS.c.hold_id.is_(None),
)
_FIND_REFERENCE = select(_TRANSACTIONS.c.id).where(
    *_REFERENCE_CONDITIONS, _TRANSACTIONS.c.reference == bindparam("reference")
)
# What an earn reads, in one statement (:func:`partners.rates.read_terms`).
_EARN_INPUTS = partner_terms_with(
    ledger.MEMBER_QUALIFYING_POINTS, _FIND_REFERENCE.scalar_subquery()
)
_BURN_INPUTS = partner_terms_with(
    ledger.MEMBER_DUE_LOTS, ledger.MEMBER_DUE_HOLDS, _FIND_REFERENCE.scalar_subquery()
)
_FIND_REFERENCES = select(_TRANSACTIONS.c.reference, _TRANSACTIONS.c.id).where(
    *_REFERENCE_CONDITIONS,
    _TRANSACTIONS.c.reference.in_(bindparam("references", expanding=True)),
)


@dataclass(frozen=True, slots=True)
class EarnItem:
    """One purchase of a bulk earn (:meth:`Operations.earn_many`): what :meth:`earn` takes."""

    member_id: str
    reference: str
    amount: str
    currency: str
    occurred_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Balance:
    """What a member has, in plain terms."""

    member_id: str
    available: int
    held: int
    tier: str
    expiring: list[tuple[int, datetime]]


@dataclass(frozen=True, slots=True)
class HoldResult:
    """A hold and the member's balance after the operation on it."""

    hold: Hold
    member: MemberState


def _check_reference(reference: str, path: str = "reference") -> None:
    if not isinstance(reference, str) or not REFERENCE_RE.fullmatch(reference):
        raise ValidationFailed.at(path, "1 to 255 visible ASCII characters")


def _check_points(points: int, path: str = "points") -> None:
    if isinstance(points, bool) or not isinstance(points, int) or not 0 < points <= MAX_POINTS:
        raise ValidationFailed.at(path, f"a whole number of points from 1 to {MAX_POINTS}")


def _money(raw: str, currency: str, path: str) -> Decimal:
    try:
        return parse_amount(raw, currency, path=path)
    except MoneyError as exc:
        raise ValidationFailed.at(exc.path, str(exc)) from None


def _check_currency(partner: PartnerTerms, currency: str) -> None:
    try:
        exponent(currency)
    except MoneyError as exc:
        raise ValidationFailed.at("currency", str(exc)) from None
    if currency != partner.currency:
        raise CurrencyMismatch(
            f"partner {partner.id} settles in {partner.currency}, not {currency}",
            expected=partner.currency,
        )


class Operations:
    """Earn, burn, hold, capture, void, reverse, bonus, adjust, and expiry jobs."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.clock = clock

    # --- transactions --------------------------------------------------------------------

    @contextlib.contextmanager
    def unit(self, session: Session | None = None) -> Iterator[Session]:
        """One operation's transaction: its own, or a savepoint in the caller's ``session``
        (none when the caller rolls its whole transaction back on any error, as the API does:
        :func:`coalition.db.owns_rollback`, or has a savepoint of its own open).
        """
        if session is None:
            with transaction(self.sessions) as own:
                yield own
        elif owns_rollback(session) or session.in_nested_transaction():
            yield session
        else:
            with session.begin_nested():
                yield session

    @contextlib.contextmanager
    def reading(self, session: Session | None = None) -> Iterator[Session]:
        """A read's transaction: its own, or the caller's ``session`` as it is (a read writes
        nothing a savepoint would have to undo)."""
        if session is None:
            with transaction(self.sessions) as own:
                yield own
        else:
            yield session

    @contextlib.contextmanager
    def batch(self) -> Iterator[Session]:
        """One transaction for many operations (pass it as ``session=``); commits at the end."""
        with transaction(self.sessions) as session:
            yield session

    def _raise_duplicate(
        self, session: Session | None, partner_id: str, kind: str, reference: str
    ) -> None:
        """After a unique-key race: name the transaction that holds the reference. (Inside a
        transaction its owner rolls back whole, the race goes up as it is: that transaction is
        aborted, and its owner runs the request again.)"""
        if owns_rollback(session):
            return
        with self.unit(session) as s:
            existing = _find_reference(s, partner_id, kind, reference)
        if existing is not None:
            raise DuplicateReference(
                f"reference {reference!r} was already used by {existing}",
                transaction_id=existing,
            )

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

    def balance(self, member_id: str, *, session: Session | None = None) -> Balance:
        """Available and held points, tier and upcoming expiries of a member."""
        now = self.clock()
        with self.reading(session) as s:
            snapshot = ledger.member_snapshot(s, member_id, since=self._tier_since(now), now=now)
            expiring = ledger.expiring_lots(s, member_id, after=now)
        tier = ledger.tier_for(snapshot.qualifying_points, self.settings.tiers)
        # Read as the member's next burn would see it: holds past their expiry released, then
        # points past their date expired (never more than is available, as the job does).
        held = snapshot.state.held - snapshot.overdue_held
        available = snapshot.state.balance - held
        available -= min(snapshot.overdue_points, max(available, 0))
        return Balance(member_id, available, held, tier.name, expiring)

    def _tier_since(self, at: datetime) -> datetime:
        """The start of the trailing window a tier at ``at`` rests on."""
        return at - timedelta(days=self.settings.tier_window_days)

    def _expires_at(self, start: datetime) -> datetime:
        return start + timedelta(days=self.settings.points_validity_days)

    def _settle_due(
        self, session: Session, member_id: str, now: datetime, due: tuple[int, int] | None = None
    ) -> None:
        """Release the member's expired holds and expire its due lots before it acts again.

        ``due``: what :func:`ledger.member_due` counted at ``now``, when the caller has it.
        """
        due_lots, due_holds = due if due is not None else ledger.member_due(session, member_id, now)
        if due_holds:
            for hold in ledger.member_due_holds(session, member_id, now):
                ledger.release_hold(session, hold=hold, status="expired", now=now)
        if due_lots:
            ledger.expire_member_lots(session, member_id, now)

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
                        "since": self._tier_since(occurred),
                        "until": occurred,
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
                return ledger.credit(s, credit)
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
        )

    def earn_many(
        self, partner_id: str, items: Sequence[EarnItem], *, session: Session | None = None
    ) -> list[Posted | CoalitionError]:
        """Many earns of one partner (its daily file, the demo) in one transaction, set-based.

        The same rules as :meth:`earn` item by item, in order: the same transactions, postings,
        lots and balances as calling it for each item would give (duplicate references also
        within the batch, the rate card in force at each item's ``occurred_at``, the tier over
        the trailing window counting the batch's earlier earns). Each item's result is in its
        place: its :class:`Posted`, or the :class:`CoalitionError` :meth:`earn` would raise (and
        nothing of that item is written). A handful of statements serve the whole batch: the
        references already used, the members (locked in id order), the rate cards, the tier
        history, then executemany inserts (:func:`ledger.credit_many`). A member who owes points
        (a clawback deficit) takes the ordinary path, which fills the deficit.

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
            used = _find_references(s, partner_id, "earn", [items[n].reference for n in spends])
            # Items whose reference was used already are duplicates whatever else they say: no
            # member lock, no tier history for them (a file imported again costs one lookup).
            fresh = [n for n in spends if items[n].reference not in used]
            members = ledger.lock_members(s, (items[n].member_id for n in fresh))
            cards = rate_card_history(s, partner_id)
            window = [occurred[n] for n in fresh if items[n].member_id in members]
            first, last = min(window, default=now), max(window, default=now)
            history = ledger.qualifying_history(
                s,
                members,
                self._tier_since(first),
                last,
                # In the window of every item: summed in the database.
                core=(self._tier_since(last), first),
            )
            credits: list[tuple[int, ledger.Credit]] = []
            for n, spend in spends.items():
                item, at = items[n], occurred[n]
                try:
                    if item.reference in used:
                        existing = used[item.reference]
                        raise DuplicateReference(
                            f"reference {item.reference!r} was already used by {existing}",
                            transaction_id=existing,
                        )
                    member = members.get(item.member_id)
                    if member is None:
                        raise UnknownMember(
                            f"no member {item.member_id!r}", member_id=item.member_id
                        )
                    if member.state.balance < 0:
                        # A deficit to fill first: the ordinary path, under its own savepoint.
                        results[n] = posted = self.earn(
                            partner_id,
                            member_id=item.member_id,
                            reference=item.reference,
                            amount=item.amount,
                            currency=item.currency,
                            occurred_at=item.occurred_at,
                            session=s,
                        )
                        used[item.reference] = posted.transaction.id
                        continue
                    earlier = history[item.member_id]
                    credit = self._earn_credit(
                        partner,
                        cards.at(at),
                        _qualifying(earlier, self._tier_since(at), at),
                        member_id=item.member_id,
                        reference=item.reference,
                        amount=item.amount,
                        spend=spend,
                        currency=item.currency,
                        occurred=at,
                        now=now,
                    )
                except CoalitionError as exc:
                    results[n] = exc
                    continue
                used[item.reference] = credit.header.id
                earlier.append((at, credit.points))
                credits.append((n, credit))
            posted_all = ledger.credit_many(s, [c for _, c in credits], members)
            for (n, _), posted in zip(credits, posted_all, strict=True):
                results[n] = posted
        assert all(r is not None for r in results)
        return cast("list[Posted | CoalitionError]", results)

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
                return ledger.debit(
                    s,
                    Header(
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
                    ),
                    to_account=partner.redeemed_account_id,
                )
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
                partner = active_partner_terms(s, partner_id, now)
                existing = s.scalar(
                    select(Hold.id).where(
                        Hold.partner_id == partner_id, Hold.reference == reference
                    )
                )
                if existing is not None:
                    raise DuplicateReference(
                        f"reference {reference!r} was already used by {existing}", hold_id=existing
                    )
                due = ledger.member_due(s, member_id, now)  # and the existence check
                partner.card_in_force()
                self._settle_due(s, member_id, now, due)
                hold, state = ledger.place_hold(
                    s,
                    partner_id=partner_id,
                    member_id=member_id,
                    reference=reference,
                    points=points,
                    expires_at=now + timedelta(seconds=seconds),
                    now=now,
                )
                return HoldResult(hold, state)
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
            hold = self._active_hold(s, partner_id, hold_id, now)
            state = ledger.release_hold(s, hold=hold, status="voided", now=now)
            hold.status, hold.closed_at = "voided", now
            return HoldResult(hold, state)

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
                        s, original=original, header=header, to_account=partner.issued_account_id
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

    def _refuse_used_reference(self, s: Session, partner_id: str, kind: str, ref: str) -> None:
        _refuse_reference_used_by(ref, _find_reference(s, partner_id, kind, ref))

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
        _check_reason(reason)
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
                card_id = partner.card_in_force().id
            return ledger.credit(
                s,
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
            )

    def adjust(
        self, *, member_id: str, points: int, reason: str, session: Session | None = None
    ) -> Posted:
        """An operator's correction of a member's balance (+ adds a lot, - spends available)."""
        if isinstance(points, bool) or not isinstance(points, int) or points == 0:
            raise ValidationFailed.at("points", "a non-zero whole number")
        _check_points(abs(points))
        _check_reason(reason)
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
                return ledger.credit(
                    s,
                    ledger.Credit(
                        header,
                        from_account=account,
                        origin_partner_id=None,
                        expires_at=self._expires_at(now),
                    ),
                )
            self._settle_due(s, member_id, now)
            return ledger.debit(s, header, to_account=account)

    # --- jobs ----------------------------------------------------------------------------

    def expire_holds(self, now: datetime | None = None) -> int:
        """Release active holds past their expiry, at most :data:`JOB_BATCHES_PER_RUN`
        batches (the next run takes the rest); returns how many."""
        at = now or self.clock()
        count = 0
        for _ in range(JOB_BATCHES_PER_RUN):
            with transaction(self.sessions) as s:
                holds = ledger.due_holds(s, at)
                for hold in holds:
                    ledger.release_hold(s, hold=hold, status=HoldStatus.EXPIRED, now=at)
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
                for member_id in members:
                    if ledger.expire_member_lots(s, member_id, at) is not None:
                        count += 1
            if len(members) < ledger.EXPIRY_BATCH:
                break
            after = members[-1]
        return count


def _check_reason(reason: str) -> None:
    if not isinstance(reason, str) or not reason.strip() or len(reason) > REASON_MAX:
        raise ValidationFailed.at("reason", f"a reason of 1 to {REASON_MAX} characters")


def _refuse_reference_used_by(reference: str, used_by: str | None) -> None:
    """:class:`DuplicateReference` naming the transaction when the reference was used."""
    if used_by is not None:
        raise DuplicateReference(
            f"reference {reference!r} was already used by {used_by}", transaction_id=used_by
        )


def _find_reference(s: Session, partner_id: str, kind: str, reference: str) -> str | None:
    return s.scalar(_FIND_REFERENCE, {"partner": partner_id, "kind": kind, "reference": reference})


def _find_references(
    s: Session, partner_id: str, kind: str, references: Sequence[str]
) -> dict[str, str]:
    """:func:`_find_reference` of many references at once: ``{reference: transaction id}``."""
    if not references:
        return {}
    rows = s.execute(
        _FIND_REFERENCES,
        {"partner": partner_id, "kind": kind, "references": sorted(set(references))},
    ).all()
    return {reference: txn_id for reference, txn_id in rows}


def _qualifying(
    history: Sequence[tuple[datetime | None, int]], since: datetime, until: datetime
) -> int:
    """What :func:`ledger.qualifying_points` sums, over rows already read (``None``: a sum
    that lies in every window asked about)."""
    return sum(points for at, points in history if at is None or since <= at <= until)


__all__ = ["Balance", "CoalitionError", "EarnItem", "HoldResult", "Operations"]
