"""Random sequences of operations keep every ledger invariant and agree with a simple model.

Three partners (EUR, JPY, BHD) and four fresh members per example run a random list of
operations: earns (some backdated), burns by points and by amount (with and without a basket
against ``max_burn_share``), holds, captures (full and partial), voids, full and partial
reversals of earns and burns (captures included), bonuses (partner-funded and coalition),
adjustments (+/-), replayed references, and clock advances (some followed by the hold- and
points-expiry jobs).

The model below is the rules of docs/recipes.md written plainly in Python: a member's
balance, held points and lots (soonest-expiring first, the earn's own lot first for an earn
reversal, a burn reversal back to the lots it took from, one deficit lot for clawbacks, expiry
of at most the available points). It predicts which operations fail and with which error, and
every returned balance, point count and amount; after each example the database must hold
exactly the model's balances, holds and lots, and ``coalition check`` must find nothing.

One database serves every example of a test (a database per example would be too slow):
references are unique across examples, and the invariants must hold whatever came before.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from typing import Any, TypeVar, cast

import pytest
from hypothesis import event, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from coalition import ledger
from coalition.config import Tier
from coalition.db import transaction
from coalition.errors import (
    BurnCapExceeded,
    CoalitionError,
    DuplicateReference,
    HoldNotActive,
    InsufficientPoints,
    ReversalExceedsOriginal,
    ValidationFailed,
)
from coalition.ledger import Header, MemberState, day_of
from coalition.models import (
    OPERATOR_ACCOUNTS,
    Hold,
    HoldStatus,
    Lot,
    Member,
    Transaction,
    TransactionKind,
)
from coalition.money import format_amount
from partners.models import Partner
from partners.operations import Operations
from tests.conftest import Db
from tests.partners.test_bulk_earn import Side as BulkSide
from tests.partners.test_bulk_earn import _setup as bulk_setup
from tests.partners.test_bulk_earn import _state as bulk_state

T = TypeVar("T")
R = TypeVar("R")

VALIDITY_DAYS = 30
TIERS = (
    Tier("base", 0, Decimal("1")),
    Tier("silver", 1_000, Decimal("1.3")),
    Tier("gold", 4_000, Decimal("1.6")),
)
TIER_WINDOW_DAYS = 20
_references = itertools.count()


@dataclass(frozen=True)
class Spec:
    """A partner of the property tests: currency, rate card, and the amounts it sees."""

    currency: str
    exponent: int
    earn: str
    burn: str
    share: str | None
    earn_minor: tuple[int, int]  # spends that earn at least one point at the base tier
    burn_minor: tuple[int, int]


SPECS = (
    Spec("EUR", 2, earn="1", burn="0.01", share="0.5", earn_minor=(100, 300_000),
         burn_minor=(1, 1_500)),
    Spec("JPY", 0, earn="0.01", burn="1", share=None, earn_minor=(100, 300_000),
         burn_minor=(1, 1_500)),
    Spec("BHD", 3, earn="2.5", burn="0.0035", share="0.2", earn_minor=(400, 1_200_000),
         burn_minor=(1, 5_000)),
)  # fmt: skip


# --- the operations --------------------------------------------------------------------------


@dataclass(frozen=True)
class Earn:
    member: int
    partner: int
    minor: int
    days_ago: int


@dataclass(frozen=True)
class BurnPoints:
    member: int
    partner: int
    points: int


@dataclass(frozen=True)
class BurnAmount:
    member: int
    partner: int
    minor: int
    basket_minor: int | None


@dataclass(frozen=True)
class PlaceHold:
    member: int
    partner: int
    points: int
    expires_in: int


@dataclass(frozen=True)
class Capture:
    hold: int
    points: int | None  # None: all of it; may exceed the hold (a validation error)


@dataclass(frozen=True)
class Void:
    hold: int


@dataclass(frozen=True)
class Reverse:
    txn: int
    points: int | None  # None: what is left


@dataclass(frozen=True)
class Bonus:
    member: int
    points: int
    funder: int | None  # a partner index, or None for the coalition


@dataclass(frozen=True)
class Adjust:
    member: int
    points: int


@dataclass(frozen=True)
class Clawback:
    """A full reversal of the member's latest earn with points left (often already spent)."""

    member: int


@dataclass(frozen=True)
class Replay:
    txn: int


@dataclass(frozen=True)
class Advance:
    seconds: int
    jobs: bool


Op = (
    Earn | BurnPoints | BurnAmount | PlaceHold | Capture | Void | Reverse | Bonus | Adjust
    | Clawback | Replay | Advance
)  # fmt: skip

MEMBERS = st.integers(0, 3)
PARTNER_IX = st.integers(0, len(SPECS) - 1)
INDEX = st.integers(0, 1_000)


@st.composite
def earns(draw: st.DrawFn) -> Earn:
    partner = draw(PARTNER_IX)
    low, high = SPECS[partner].earn_minor
    minor = draw(st.integers(low, high // 10) | st.integers(low, high))
    return Earn(draw(MEMBERS), partner, minor, draw(st.sampled_from([0, 0, 0, 3, 12, 25])))


@st.composite
def burns_by_amount(draw: st.DrawFn) -> BurnAmount:
    partner = draw(PARTNER_IX)
    low, high = SPECS[partner].burn_minor
    minor = draw(st.integers(low, high))
    basket = draw(st.none() | st.integers(1, 4 * high))
    return BurnAmount(draw(MEMBERS), partner, minor, basket)


OPS: st.SearchStrategy[Op] = st.one_of(
    earns(),
    earns(),
    st.builds(BurnPoints, MEMBERS, PARTNER_IX, st.integers(1, 1_500)),
    burns_by_amount(),
    st.builds(PlaceHold, MEMBERS, PARTNER_IX, st.integers(1, 700),
              st.sampled_from([60, 3_600, 3 * 86_400])),
    st.builds(Capture, INDEX, st.none() | st.integers(1, 700)),
    st.builds(Void, INDEX),
    st.builds(Reverse, INDEX, st.none() | st.integers(1, 1_000)),
    st.builds(Bonus, MEMBERS, st.integers(1, 500), st.none() | PARTNER_IX),
    st.builds(Adjust, MEMBERS, st.integers(-800, 800).filter(bool)),
    st.builds(Clawback, MEMBERS),
    st.builds(Replay, INDEX),
    st.builds(Advance, st.sampled_from([30, 3_600, 86_400, 6 * 86_400, 16 * 86_400,
                                        31 * 86_400]), st.booleans()),
)  # fmt: skip


# --- the model -------------------------------------------------------------------------------


class Refused(Exception):
    """The model's prediction that an operation fails with ``error`` and changes nothing."""

    def __init__(self, error: type[CoalitionError]) -> None:
        super().__init__(error.__name__)
        self.error = error


@dataclass
class MLot:
    seq: int
    points: int
    remaining: int
    expires_at: datetime | None
    origin: str | None
    deficit: bool = False


@dataclass
class MHold:
    member: int
    partner: int
    points: int
    expires_at: datetime
    status: str = "active"
    id: str = ""


@dataclass
class MTxn:
    """A transaction the model may reverse or replay (earns and burns, captures included)."""

    key: int
    kind: str
    partner: int
    member: int
    points: int
    amount_minor: int
    reference: str
    own_lot: MLot | None = None
    is_capture: bool = False
    reversal_keys: list[int] = field(default_factory=list)
    reversed_points: int = 0
    reversed_amount: int = 0
    id: str = ""


@dataclass
class MMember:
    id: str
    balance: int = 0
    held: int = 0
    lots: list[MLot] = field(default_factory=list)  # in creation order, the deficit lot too
    deficit: MLot | None = None
    qualifying: list[tuple[datetime, int]] = field(default_factory=list)
    expired_points: int = 0
    expiries: int = 0

    @property
    def available(self) -> int:
        return self.balance - self.held


@dataclass
class Expected:
    """What a successful operation must return."""

    balance: int
    held: int
    points: int = 0
    amount_minor: int | None = None
    overdraft: int = 0
    tier: str | None = None
    txn: MTxn | None = None
    hold: MHold | None = None


def expiry(lot: MLot) -> datetime:
    assert lot.expires_at is not None
    return lot.expires_at


def due(lot: MLot, now: datetime) -> bool:
    """An open lot past its expiry date."""
    return not lot.deficit and lot.remaining > 0 and expiry(lot) <= now


def half_even(value: Decimal, exponent: int) -> int:
    """``value`` in major units, rounded half-even to whole minor units."""
    return int((value.scaleb(exponent)).to_integral_value(rounding=ROUND_HALF_EVEN))


@dataclass
class Model:
    partner_ids: list[str]
    members: list[MMember]
    holds: list[MHold] = field(default_factory=list)
    txns: list[MTxn] = field(default_factory=list)
    moves: dict[int, dict[int, int]] = field(default_factory=dict)  # txn key -> lot seq -> delta
    next_seq: int = 0
    next_key: int = 0

    # -- lots --

    def key(self) -> int:
        self.next_key += 1
        return self.next_key

    def _record(self, key: int, lot: MLot, delta: int) -> None:
        lot.remaining += delta
        by_lot = self.moves.setdefault(key, {})
        by_lot[lot.seq] = by_lot.get(lot.seq, 0) + delta

    def add_lot(self, m: MMember, points: int, origin: str | None, expires_at: datetime) -> MLot:
        self.next_seq += 1
        lot = MLot(self.next_seq, points, points, expires_at, origin)
        m.lots.append(lot)
        return lot

    def take(
        self,
        m: MMember,
        key: int,
        points: int,
        *,
        first: MLot | None = None,
        expired_by: datetime | None = None,
    ) -> int:
        """Take up to ``points`` soonest-expiring first (``first`` before all); points taken."""
        left = points
        if first is not None and first.remaining > 0:
            taken = min(first.remaining, left)
            self._record(key, first, -taken)
            left -= taken
        candidates = [
            lot
            for lot in m.lots
            if not lot.deficit
            and lot.remaining > 0
            and lot is not first
            and (expired_by is None or expiry(lot) <= expired_by)
        ]
        candidates.sort(key=lambda lot: (expiry(lot), lot.seq))
        for lot in candidates:
            if left == 0:
                break
            taken = min(lot.remaining, left)
            self._record(key, lot, -taken)
            left -= taken
        return points - left

    def deepen_deficit(self, m: MMember, key: int, points: int) -> None:
        event("a clawback deepens a deficit")
        if m.deficit is None:
            self.next_seq += 1
            m.deficit = MLot(self.next_seq, 0, 0, None, None, deficit=True)
            m.lots.append(m.deficit)
        self._record(key, m.deficit, -points)

    def fill_deficit(self, m: MMember, key: int) -> None:
        if m.deficit is None or m.deficit.remaining >= 0:
            return
        filled = self.take(m, key, -m.deficit.remaining)
        if filled:
            event("a credit fills a deficit")
            self._record(key, m.deficit, filled)

    # -- ledger operations --

    def credit(
        self, m: MMember, key: int, points: int, origin: str | None, expires_at: datetime
    ) -> MLot:
        before = m.balance
        m.balance += points
        lot = self.add_lot(m, points, origin, expires_at)
        if before < 0:
            self.fill_deficit(m, key)
        return lot

    def debit(self, m: MMember, key: int, points: int) -> None:
        if m.available < points:
            raise Refused(InsufficientPoints)
        m.balance -= points
        assert self.take(m, key, points) == points

    def expire_member(self, m: MMember, now: datetime) -> None:
        points = min(sum(lot.remaining for lot in m.lots if due(lot, now)), max(m.available, 0))
        if points <= 0:
            return
        event("points expire")
        m.balance -= points
        m.expired_points += points
        m.expiries += 1
        assert self.take(m, self.key(), points, expired_by=now) == points

    def release(self, hold: MHold, status: str) -> None:
        self.members[hold.member].held -= hold.points
        hold.status = status

    def settle_due(self, member: int, now: datetime) -> None:
        """What a burn, hold or negative adjustment does first: end due holds, expire lots."""
        for hold in self.holds:
            if hold.member == member and hold.status == "active" and hold.expires_at <= now:
                self.release(hold, "expired")
        m = self.members[member]
        if any(due(lot, now) for lot in m.lots):
            self.expire_member(m, now)

    def tier(self, member: int, at: datetime) -> Tier:
        # The UTC day of ``at`` and the W - 1 days before it, every earn of them counted.
        day = day_of(at)
        points = sum(
            p
            for when, p in self.members[member].qualifying
            if day - TIER_WINDOW_DAYS < day_of(when) <= day
        )
        reached = TIERS[0]
        for tier in TIERS:
            if points >= tier.threshold_points:
                reached = tier
        return reached

    def active_hold(self, hold: MHold, now: datetime) -> None:
        if hold.status != "active" or hold.expires_at <= now:
            raise Refused(HoldNotActive)


def expected_state(m: MMember, **values: Any) -> Expected:
    return Expected(balance=m.balance, held=m.held, **values)


# --- running an example ----------------------------------------------------------------------


class Run:
    """One example: the model and the database side by side."""

    def __init__(self, db: Db, ops: Operations, partners: list[Partner]) -> None:
        self.db = db
        self.ops = ops
        self.partners = partners
        members = [MMember(ops.create_member()[0]) for _ in range(4)]
        self.model = Model([p.id for p in partners], members)
        self.error: CoalitionError | None = None
        self.label = ""

    @property
    def now(self) -> datetime:
        return self.db.clock()

    def attempt(
        self, model_fn: Callable[[Model], T], real_fn: Callable[[], R]
    ) -> tuple[T, R] | None:
        """Run the model on a copy and the real operation; they must agree on failing."""
        trial = copy.deepcopy(self.model)
        predicted: type[CoalitionError] | None = None
        try:
            expected = model_fn(trial)
        except Refused as refused:
            predicted = refused.error
        if predicted is not None:
            with pytest.raises(CoalitionError) as info:
                real_fn()
            assert type(info.value) is predicted, f"expected {predicted.__name__}: {info.value!r}"
            self.error = info.value
            event(f"{self.label}: {predicted.__name__}")
            return None
        try:
            result = real_fn()
        except CoalitionError as exc:
            raise AssertionError(f"the model expected success, got {exc!r}") from exc
        self.model = trial
        event(f"{self.label}: ok")
        return expected, result

    def posted(self, expected: Expected, state: MemberState, txn: Transaction | None) -> None:
        assert (state.balance, state.held) == (expected.balance, expected.held)
        if txn is not None:
            assert txn.points == expected.points
            assert txn.amount_minor == expected.amount_minor
            assert txn.overdraft_points == expected.overdraft
            assert txn.balance_after == expected.balance
            if expected.tier is not None:
                assert txn.tier == expected.tier
            if expected.txn is not None:
                expected.txn.id = txn.id

    def reference(self) -> str:
        return f"ref-{next(_references)}"

    # -- one method per operation --

    def earn(self, op: Earn) -> None:
        spec, partner = SPECS[op.partner], self.partners[op.partner]
        amount = format_amount(op.minor, spec.currency)
        now, reference = self.now, self.reference()
        occurred = now - timedelta(days=op.days_ago)

        def model(t: Model) -> Expected:
            tier = t.tier(op.member, occurred)
            spend = Decimal(amount)
            points = int(
                (spend * Decimal(spec.earn) * tier.multiplier).to_integral_value(ROUND_FLOOR)
            )
            m = t.members[op.member]
            key = t.key()
            lot = t.credit(m, key, points, partner.id, occurred + timedelta(days=VALIDITY_DAYS))
            m.qualifying.append((occurred, points))
            event(f"earn at tier {tier.name}")
            txn = MTxn(key, "earn", op.partner, op.member, points, op.minor, reference, lot)
            t.txns.append(txn)
            return expected_state(m, points=points, amount_minor=op.minor, tier=tier.name, txn=txn)

        outcome = self.attempt(
            model,
            lambda: self.ops.earn(
                partner.id,
                member_id=self.model.members[op.member].id,
                reference=reference,
                amount=amount,
                currency=spec.currency,
                occurred_at=occurred if op.days_ago else None,
            ),
        )
        assert outcome is not None
        expected, posted = outcome
        self.posted(expected, posted.member, posted.transaction)

    def _burn(self, t: Model, member: int, partner: int, points: int, reference: str) -> Expected:
        spec = SPECS[partner]
        amount = half_even(points * Decimal(spec.burn), spec.exponent)
        t.settle_due(member, self.now)
        m = t.members[member]
        key = t.key()
        t.debit(m, key, points)
        txn = MTxn(key, "burn", partner, member, points, amount, reference)
        t.txns.append(txn)
        return expected_state(m, points=points, amount_minor=amount, txn=txn)

    def burn_points(self, op: BurnPoints) -> None:
        reference = self.reference()
        outcome = self.attempt(
            lambda t: self._burn(t, op.member, op.partner, op.points, reference),
            lambda: self.ops.burn(
                self.partners[op.partner].id,
                member_id=self.model.members[op.member].id,
                reference=reference,
                points=op.points,
            ),
        )
        if outcome is not None:
            expected, posted = outcome
            self.posted(expected, posted.member, posted.transaction)

    def burn_amount(self, op: BurnAmount) -> None:
        spec = SPECS[op.partner]
        reference = self.reference()
        amount = format_amount(op.minor, spec.currency)
        basket = None if op.basket_minor is None else format_amount(op.basket_minor, spec.currency)

        def model(t: Model) -> Expected:
            points = int((Decimal(amount) / Decimal(spec.burn)).to_integral_value(ROUND_CEILING))
            value = Decimal(half_even(points * Decimal(spec.burn), spec.exponent)).scaleb(
                -spec.exponent
            )
            if basket is not None and value > Decimal(basket) * Decimal(spec.share or "1"):
                raise Refused(BurnCapExceeded)
            return self._burn(t, op.member, op.partner, points, reference)

        outcome = self.attempt(
            model,
            lambda: self.ops.burn(
                self.partners[op.partner].id,
                member_id=self.model.members[op.member].id,
                reference=reference,
                amount=amount,
                currency=spec.currency,
                basket_amount=basket,
            ),
        )
        if outcome is not None:
            expected, posted = outcome
            self.posted(expected, posted.member, posted.transaction)

    def place_hold(self, op: PlaceHold) -> None:
        reference, now = self.reference(), self.now

        def model(t: Model) -> Expected:
            t.settle_due(op.member, now)
            m = t.members[op.member]
            if m.available < op.points:
                raise Refused(InsufficientPoints)
            m.held += op.points
            hold = MHold(op.member, op.partner, op.points, now + timedelta(seconds=op.expires_in))
            t.holds.append(hold)
            return expected_state(m, hold=hold)

        outcome = self.attempt(
            model,
            lambda: self.ops.hold(
                self.partners[op.partner].id,
                member_id=self.model.members[op.member].id,
                reference=reference,
                points=op.points,
                expires_in=op.expires_in,
            ),
        )
        if outcome is not None:
            expected, result = outcome
            self.posted(expected, result.member, None)
            assert expected.hold is not None
            expected.hold.id = result.hold.id
            assert result.hold.status == "active" and result.hold.points == expected.hold.points

    def pick_hold(self, index: int) -> int:
        """Mostly an active hold (when there is one), sometimes any hold."""
        holds = self.model.holds
        active = [ix for ix, h in enumerate(holds) if h.status == "active"]
        if active and index % 4:
            return active[index % len(active)]
        return index % len(holds)

    def capture(self, op: Capture) -> None:
        if not self.model.holds:
            return
        ix = self.pick_hold(op.hold)
        hold = self.model.holds[ix]
        spec, now = SPECS[hold.partner], self.now

        def model(t: Model) -> Expected:
            h = t.holds[ix]
            t.active_hold(h, now)
            points = h.points if op.points is None else op.points
            if points > h.points:
                raise Refused(ValidationFailed)
            m = t.members[h.member]
            key = t.key()
            m.balance -= points
            m.held -= h.points
            taken = t.take(m, key, points)
            if taken < points:
                t.deepen_deficit(m, key, points - taken)
            h.status = "captured"
            amount = half_even(points * Decimal(spec.burn), spec.exponent)
            txn = MTxn(key, "burn", h.partner, h.member, points, amount, "", is_capture=True)
            t.txns.append(txn)
            return expected_state(m, points=points, amount_minor=amount, txn=txn)

        outcome = self.attempt(
            model,
            lambda: self.ops.capture(self.partners[hold.partner].id, hold.id, points=op.points),
        )
        if outcome is not None:
            expected, posted = outcome
            self.posted(expected, posted.member, posted.transaction)
            assert posted.transaction.hold_id == hold.id

    def void(self, op: Void) -> None:
        if not self.model.holds:
            return
        ix = self.pick_hold(op.hold)
        hold, now = self.model.holds[ix], self.now

        def model(t: Model) -> Expected:
            h = t.holds[ix]
            t.active_hold(h, now)
            t.release(h, "voided")
            return expected_state(t.members[h.member])

        outcome = self.attempt(
            model, lambda: self.ops.void(self.partners[hold.partner].id, hold.id)
        )
        if outcome is not None:
            expected, result = outcome
            self.posted(expected, result.member, None)
            assert result.hold.status == "voided"

    def reverse(self, op: Reverse) -> None:
        if not self.model.txns:
            return
        ix = op.txn % len(self.model.txns)
        original = self.model.txns[ix]
        reference, now = self.reference(), self.now
        partner = self.partners[original.partner]

        def model(t: Model) -> Expected:
            o = t.txns[ix]
            left = o.points - o.reversed_points
            take = left if op.points is None else op.points
            if take > left or left == 0:
                raise Refused(ReversalExceedsOriginal)
            if take == left:
                amount = o.amount_minor - o.reversed_amount
            else:
                amount = half_even(Decimal(o.amount_minor) * take / o.points, 0)
            m = t.members[o.member]
            key = t.key()
            o.reversal_keys.append(key)
            o.reversed_points += take
            o.reversed_amount += amount
            overdraft = 0
            if o.kind == "earn":
                overdraft = take - min(max(m.available, 0), take)
                m.balance -= take
                taken = t.take(m, key, take, first=o.own_lot)
                if taken < take:
                    t.deepen_deficit(m, key, take - taken)
                m.qualifying.append((now, -take))
            else:
                before = m.balance
                m.balance += take
                net: dict[int, int] = {}
                for k in [o.key, *o.reversal_keys]:
                    for seq, delta in t.moves.get(k, {}).items():
                        net[seq] = net.get(seq, 0) + delta
                taken_from = [lot for lot in m.lots if not lot.deficit and net.get(lot.seq, 0) < 0]
                taken_from.sort(key=lambda lot: (expiry(lot), lot.seq), reverse=True)
                left_back = take
                for lot in taken_from:
                    if left_back == 0:
                        break
                    back = min(-net[lot.seq], left_back)
                    t._record(key, lot, back)
                    left_back -= back
                if left_back:
                    event("a burn reversal returns points a capture took beyond the lots")
                    t.add_lot(m, left_back, None, now + timedelta(days=VALIDITY_DAYS))
                if before < 0:
                    t.fill_deficit(m, key)
            return expected_state(m, points=take, amount_minor=amount, overdraft=overdraft)

        outcome = self.attempt(
            model,
            lambda: self.ops.reverse(
                partner.id, original.id, reference=reference, points=op.points
            ),
        )
        if outcome is not None:
            expected, posted = outcome
            self.posted(expected, posted.member, posted.transaction)
            assert posted.transaction.kind == f"{original.kind}_reversal"
            assert posted.transaction.reverses == original.id

    def clawback(self, op: Clawback) -> None:
        for ix in reversed(range(len(self.model.txns))):
            txn = self.model.txns[ix]
            if txn.kind == "earn" and txn.member == op.member and txn.reversed_points < txn.points:
                self.reverse(Reverse(ix, None))
                return

    def bonus(self, op: Bonus) -> None:
        now = self.now
        funder = None if op.funder is None else self.partners[op.funder].id

        def model(t: Model) -> Expected:
            m = t.members[op.member]
            t.credit(m, t.key(), op.points, funder, now + timedelta(days=VALIDITY_DAYS))
            return expected_state(m, points=op.points)

        outcome = self.attempt(
            model,
            lambda: self.ops.bonus(
                member_id=self.model.members[op.member].id,
                points=op.points,
                reason="property test",
                funded_by=funder or "coalition",
            ),
        )
        assert outcome is not None
        expected, posted = outcome
        self.posted(expected, posted.member, posted.transaction)
        assert posted.transaction.partner_id == funder

    def adjust(self, op: Adjust) -> None:
        now = self.now

        def model(t: Model) -> Expected:
            m = t.members[op.member]
            if op.points > 0:
                t.credit(m, t.key(), op.points, None, now + timedelta(days=VALIDITY_DAYS))
            else:
                t.settle_due(op.member, now)
                t.debit(m, t.key(), -op.points)
            return expected_state(m, points=abs(op.points))

        outcome = self.attempt(
            model,
            lambda: self.ops.adjust(
                member_id=self.model.members[op.member].id, points=op.points, reason="fix"
            ),
        )
        if outcome is not None:
            expected, posted = outcome
            self.posted(expected, posted.member, posted.transaction)

    def replay(self, op: Replay) -> None:
        """The same reference for the same kind at the same partner names the first one."""
        replayable = [t for t in self.model.txns if not t.is_capture]
        if not replayable:
            return
        original = replayable[op.txn % len(replayable)]
        spec, partner = SPECS[original.partner], self.partners[original.partner]
        member = self.model.members[original.member].id

        def real() -> object:
            if original.kind == "earn":
                return self.ops.earn(
                    partner.id,
                    member_id=member,
                    reference=original.reference,
                    amount=format_amount(spec.earn_minor[0], spec.currency),
                    currency=spec.currency,
                )
            return self.ops.burn(
                partner.id, member_id=member, reference=original.reference, points=1
            )

        def model(_t: Model) -> None:
            raise Refused(DuplicateReference)

        self.attempt(model, real)
        assert self.error is not None
        assert self.error.extra["transaction_id"] == original.id

    def advance(self, op: Advance) -> None:
        now = self.db.clock.advance(seconds=op.seconds)
        if not op.jobs:
            return
        t = self.model
        due_holds = [h for h in t.holds if h.status == "active" and h.expires_at <= now]
        for hold in due_holds:
            t.release(hold, "expired")
        before = sum(m.expiries for m in t.members)
        for m in t.members:
            t.expire_member(m, now)
        # The jobs run over the whole database, earlier examples' members included.
        assert self.ops.expire_holds() >= len(due_holds)
        assert self.ops.expire_points() >= sum(m.expiries for m in t.members) - before

    def step(self, op: Op) -> None:
        handlers: dict[type[Any], Callable[[Any], None]] = {
            Earn: self.earn,
            BurnPoints: self.burn_points,
            BurnAmount: self.burn_amount,
            PlaceHold: self.place_hold,
            Capture: self.capture,
            Void: self.void,
            Reverse: self.reverse,
            Bonus: self.bonus,
            Adjust: self.adjust,
            Clawback: self.clawback,
            Replay: self.replay,
            Advance: self.advance,
        }
        self.label = type(op).__name__
        handlers[type(op)](op)

    # -- the database agrees with the model --

    def verify(self) -> None:
        self.db.assert_ledger_ok()
        with self.db.sessions() as s:
            for m in self.model.members:
                balance, held = s.execute(
                    select(Member.balance, Member.held).where(Member.id == m.id)
                ).one()
                assert (balance, held) == (m.balance, m.held), m.id
                lots = s.execute(
                    select(
                        Lot.points, Lot.remaining, Lot.expires_at, Lot.is_deficit,
                        Lot.origin_partner_id,
                    )
                    .where(Lot.member_id == m.id)
                    .order_by(Lot.id)
                ).all()  # fmt: skip
                want = [
                    (lot.points, lot.remaining, lot.expires_at, lot.deficit, lot.origin)
                    for lot in m.lots
                ]
                assert [tuple(row) for row in lots] == want, m.id
                expired = s.execute(
                    select(func.count(), func.coalesce(func.sum(Transaction.points), 0)).where(
                        Transaction.member_id == m.id, Transaction.kind == "expiry"
                    )
                ).one()
                assert tuple(expired) == (m.expiries, m.expired_points), m.id
            rows = s.execute(
                select(Hold.id, Hold.status).where(Hold.id.in_([h.id for h in self.model.holds]))
            ).all()
            statuses = {hold_id: status for hold_id, status in rows}
            assert statuses == {h.id: h.status for h in self.model.holds}


def _setup(db: Db) -> tuple[Operations, list[Partner]]:
    db.configure(points_validity_days=VALIDITY_DAYS, tier_window_days=TIER_WINDOW_DAYS, tiers=TIERS)
    partners = [
        db.partner(
            spec.currency,
            earn=spec.earn,
            burn=spec.burn,
            issue="0.001",
            reimburse="0.001",
            max_burn_share=spec.share,
            name=spec.currency,
        )
        for spec in SPECS
    ]
    # Rate cards in force long enough for backdated earns.
    db.clock.advance(days=40)
    return db.ops, partners


def test_random_operation_sequences_keep_the_invariants_and_match_the_model(db: Db) -> None:
    ops, partners = _setup(db)
    examples = 40 if db.backend == "sqlite" else 20

    @settings(max_examples=examples, deadline=None, database=None, print_blob=True)
    @given(st.lists(OPS, min_size=10, max_size=40))
    def run(sequence: list[Op]) -> None:
        note(f"operations: {sequence!r}")
        example = Run(db, ops, partners)
        for member in range(3):  # three members start with points, the fourth with none
            example.step(Earn(member, member, SPECS[member].earn_minor[1] // 3, 0))
        for op in sequence:
            example.step(op)
        example.verify()

    run()


# --- batches: any batch posted at once = its movements posted one by one ----------------------

# A batch of movements drawn by hypothesis: the member (member 1 owes points), what it is (an
# earn of the side's partner, counting in the tier basis; a bonus the coalition funds; an
# operator's adjustment up or down; a burn; the reversal of an earn or of a burn of an earlier
# batch; a hold placed; a hold of an earlier batch voided, or captured: the hold closed and
# its burn, two movements), the points, the lot's (or the hold's) validity in days, how long
# ago an earn occurred, and which earlier earn, burn or hold a reversal, void or capture takes.
_WHATS = [
    "earn",
    "bonus",
    "adjust+",
    "burn",
    "adjust-",
    "reverse_earn",
    "reverse_burn",
    "hold",
    "void",
    "capture",
]
_MOVES = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.sampled_from(_WHATS),
        st.integers(1, 3_000),
        st.sampled_from([1, 2, 45]),
        st.none() | st.floats(0, 40),
        st.integers(0, 1_000),
    ),
    min_size=1,
    max_size=25,
)
_Drawn = tuple[int, str, int, int, float | None, int]


@dataclass
class _Past:
    """The earns and burns posted on both sides by earlier batches, in the same order:
    ``(id on side a, id on side b, member, points left to reverse)``; the holds still active
    ``(hold on side a, hold on side b, member, points)``."""

    earns: list[list[Any]] = field(default_factory=list)
    burns: list[list[Any]] = field(default_factory=list)
    holds: list[list[Any]] = field(default_factory=list)


def _plan(drawn: list[_Drawn], available: list[int], past: _Past) -> list[tuple[Any, ...]]:
    """The drawn movements that are valid one after the other: a debit that may not overdraw
    at most the member's available points, a reversal of what is left of an earlier one."""
    plan: list[tuple[Any, ...]] = []
    for step in drawn:
        member, what, points, days, hours, pick = step
        original = None
        if what in ("burn", "adjust-", "hold"):
            points = min(points, available[member])
        elif what in ("void", "capture"):
            if not past.holds:
                continue
            original = past.holds.pop(pick % len(past.holds))
            member, held = original[2], original[3]
            points = min(points, held) if what == "capture" else held
            available[member] += held - (points if what == "capture" else 0)
            plan.append((member, what, points, days, hours, original))
            continue
        elif what.startswith("reverse"):
            pool = past.earns if what == "reverse_earn" else past.burns
            open_ = [p for p in pool if p[3] > 0]
            if not open_:
                continue
            original = open_[pick % len(open_)]
            member, points = original[2], min(points, original[3])
            original[3] -= points
        if points <= 0:
            continue
        sign = -1 if what in ("burn", "adjust-", "reverse_earn", "hold") else 1
        available[member] += sign * points
        plan.append((member, what, points, days, hours, original))
    return plan


def _movements(
    s: Any, side: BulkSide, a_side: bool, step: tuple[Any, ...], ref: str, now: datetime
) -> list[ledger.Credit | ledger.Debit | ledger.PlaceHold | ledger.CloseHold]:
    """The step's movements: one, or a capture's two (its hold closed, its burn)."""
    member, what, points, days, _, original = step
    partner = side.partner
    if what == "hold":
        expires_at = now + timedelta(hours=10 * days)  # 10, 20 or 450 hours
        member_id = side.members[member]
        return [ledger.PlaceHold(partner.id, member_id, ref, points, expires_at, now)]
    if what == "void":
        return [ledger.CloseHold(original[0 if a_side else 1], HoldStatus.VOIDED, now)]
    if what == "capture":
        hold: Hold = original[0 if a_side else 1]
        header = Header(
            kind=TransactionKind.BURN,
            member_id=hold.member_id,
            points=points,
            occurred_at=now,
            posted_at=now,
            partner_id=partner.id,
            reference=hold.reference,
            currency="EUR",
            amount_minor=points,
            rate_card_id=side.cards[-1],
            hold_id=hold.id,
        )
        close = ledger.CloseHold(
            hold, HoldStatus.CAPTURED, now, captured_points=points, transaction_id=header.id
        )
        burn = ledger.Debit(header, partner.redeemed_account_id, overdraw=True)
        return [close, burn]
    return [_movement(s, side, a_side, step, ref, now)]


def _movement(
    s: Any, side: BulkSide, a_side: bool, step: tuple[Any, ...], ref: str, now: datetime
) -> ledger.Credit | ledger.Debit:
    member, what, points, days, hours, original = step
    partner = side.partner
    card = side.cards[-1]
    occurred = now if hours is None or what != "earn" else now - timedelta(hours=hours)
    kind = {
        "earn": TransactionKind.EARN,
        "bonus": TransactionKind.BONUS,
        "adjust+": TransactionKind.ADJUSTMENT,
        "adjust-": TransactionKind.ADJUSTMENT,
        "burn": TransactionKind.BURN,
        "reverse_earn": TransactionKind.EARN_REVERSAL,
        "reverse_burn": TransactionKind.BURN_REVERSAL,
    }[what]
    billed = what in ("earn", "burn", "reverse_earn", "reverse_burn")
    reverses = None if original is None else original[0 if a_side else 1]
    header = Header(
        kind=kind,
        member_id=side.members[member],
        points=points,
        occurred_at=occurred,
        posted_at=now,
        partner_id=partner.id if billed else None,
        reference=ref if billed else None,
        currency="EUR" if billed else None,
        amount_minor=points if billed else None,
        rate_card_id=card if billed else None,
        reverses=reverses,
        reason=None if billed else "drawn",
    )
    expires_at = occurred + timedelta(days=days)
    adjustment = OPERATOR_ACCOUNTS["operator_adjustment"]
    if what == "earn":
        return ledger.Credit(header, partner.issued_account_id, partner.id, expires_at, 2)
    if what == "bonus":
        return ledger.Credit(header, OPERATOR_ACCOUNTS["operator_bonus"], None, expires_at)
    if what == "adjust+":
        return ledger.Credit(header, adjustment, None, expires_at)
    if what == "reverse_burn":
        return ledger.Credit(
            header, partner.redeemed_account_id, None, expires_at, restores=reverses
        )
    if what == "reverse_earn":
        own = s.scalar(
            select(Lot.id).where(Lot.transaction_id == reverses, Lot.is_deficit.is_(False))
        )
        return ledger.Debit(
            header,
            partner.issued_account_id,
            overdraw=True,
            records_overdraft=True,
            first_lot_id=own,
            tier_window_days=2,
        )
    to = partner.redeemed_account_id if what == "burn" else adjustment
    return ledger.Debit(header, to)


def _posted_outcome(posted: ledger.Posted | ledger.HoldPosted, side: BulkSide) -> tuple[Any, ...]:
    if isinstance(posted, ledger.HoldPosted):
        hold = posted.hold
        return (
            side.members.index(hold.member_id),
            "hold",
            hold.reference,
            hold.points,
            hold.status,
            hold.captured_points,
            hold.expires_at,
            posted.member.balance,
            posted.member.held,
        )
    txn = posted.transaction

    def role(account: int | None) -> Any:
        if account in side.accounts:
            return side.members.index(txn.member_id) == side.accounts.index(account)
        partner = side.partner
        names = {partner.issued_account_id: "issued", partner.redeemed_account_id: "redeemed"}
        return names.get(cast("int", account), account)  # an operator account: its fixed id

    return (
        side.members.index(txn.member_id),
        txn.kind,
        txn.points,
        txn.balance_after,
        txn.overdraft_points,
        posted.member.balance,
        posted.member.held,
        role(txn.debit_account_id),
        role(txn.credit_account_id),
    )


def test_any_batch_of_movements_posted_at_once_leaves_what_one_by_one_leaves(db: Db) -> None:
    # Credits (earns with a two-day tier window, some backdated; bonuses; adjustments),
    # debits (burns, adjustments) and reversals of earlier earns and burns, for members who
    # owe points and members who do not, holds placed, voided and captured: the one write path
    # (ledger.post) given the batch at once and given its movements one at a time, then the
    # expiry of all the members' due lots at once and member by member, and of their holds
    # past their expiry at once and hold by hold.
    db.configure(tier_window_days=2)
    a, b = bulk_setup(db, members=4)
    past = _Past()
    round_ = iter(range(1_000_000))

    @settings(max_examples=15, deadline=None, database=None, print_blob=True)
    @given(_MOVES)
    def run(drawn: list[_Drawn]) -> None:
        now = db.clock()
        n = next(round_)
        with transaction(db.sessions) as s:
            available = [ledger.member_state(s, m).available for m in a.members]
        plan = _plan(drawn, available, past)
        for what in sorted({step[1] for step in plan}):
            event(f"a batch with {what}")
        with transaction(db.sessions) as s:
            moves = [
                move
                for k, step in enumerate(plan)
                for move in _movements(s, a, True, step, f"m{n}-{k}", now)
            ]
            batch = ledger.post(s, moves)
        single: list[ledger.Posted | ledger.HoldPosted] = []
        for k, step in enumerate(plan):
            with transaction(db.sessions) as s:
                one_side = _movements(s, b, False, step, f"m{n}-{k}", now)
            for move in one_side:
                with transaction(db.sessions) as s:
                    single.extend(ledger.post(s, [move]))
        assert [_posted_outcome(p, a) for p in batch] == [_posted_outcome(p, b) for p in single]
        if any(isinstance(p, ledger.Posted) and p.transaction.overdraft_points for p in batch):
            event("an earn reversal overdrew")
        assert _sides_state(db, a) == _sides_state(db, b)
        db.assert_ledger_ok()
        posted = iter(zip(batch, single, strict=True))
        for step in plan:
            x, y = next(posted)
            if step[1] == "capture":
                x, y = next(posted)
            pool = {"earn": past.earns, "burn": past.burns, "hold": past.holds}.get(step[1])
            if isinstance(x, ledger.HoldPosted) and isinstance(y, ledger.HoldPosted):
                past.holds.append([x.hold, y.hold, step[0], step[2]])
            elif pool is not None and isinstance(x, ledger.Posted) and isinstance(y, ledger.Posted):
                pool.append([x.transaction.id, y.transaction.id, step[0], step[2]])
        # Member 1 spends all it has and an earn of it is reversed: the next batch fills its
        # deficit.
        for side in (a, b):
            pid, member = side.partner.id, side.members[1]
            earned = db.ops.earn(
                pid, member_id=member, reference=f"owe-e{n}", amount="10", currency="EUR"
            )
            with transaction(db.sessions) as s:
                ledger.expire_lots(s, [member], db.clock())  # as the burn would first
                left = ledger.member_state(s, member).available
            if left > 0:
                db.ops.burn(pid, member_id=member, reference=f"owe-b{n}", points=left)
            db.ops.reverse(pid, earned.transaction.id, reference=f"owe-r{n}")
        # Expiry: every member's due lots at once on one side, member by member on the other.
        now = db.clock.advance(hours=drawn[0][2] % 30)
        with transaction(db.sessions) as s:
            expired = ledger.expire_lots(s, a.members, now)
        alone = []
        for member in b.members:
            with transaction(db.sessions) as s:
                alone.extend(ledger.expire_lots(s, [member], now))
        event(f"{len(expired)} members' lots expired")
        assert [_posted_outcome(p, a) for p in expired] == [_posted_outcome(p, b) for p in alone]
        assert _sides_state(db, a) == _sides_state(db, b)
        # The holds past their expiry: at once on one side, one by one on the other (those the
        # burns above released are no longer active).
        with db.sessions() as s:
            active = set(s.scalars(select(Hold.id).where(Hold.status == "active")))
        assert all((x.id in active) == (y.id in active) for x, y, _, _ in past.holds)
        past.holds = [h for h in past.holds if h[0].id in active]
        with transaction(db.sessions) as s:
            due = [h for h in ledger.due_holds(s, now) if h.member_id in a.members]
            released = ledger.expire_holds(s, due, now)
        due_ids = {h.id for h in due}
        one_by_one = []
        for x, y, _, _ in past.holds:
            if x.id in due_ids:
                with transaction(db.sessions) as s:
                    one_by_one.extend(ledger.expire_holds(s, [y], now))
        assert len(one_by_one) == len(released)
        event(f"{len(released)} holds expired")
        outcome = sorted(_posted_outcome(p, a) for p in released)
        assert outcome == sorted(_posted_outcome(p, b) for p in one_by_one)
        assert _sides_state(db, a) == _sides_state(db, b)
        past.holds = [h for h in past.holds if h[0].id not in due_ids]

    run()


def _sides_state(db: Db, side: BulkSide) -> tuple[Any, ...]:
    """:func:`bulk_state` and the side's holds (their ids left out)."""
    with db.sessions() as s:
        holds = s.execute(
            select(
                Hold.member_id,
                Hold.reference,
                Hold.points,
                Hold.status,
                Hold.captured_points,
                Hold.expires_at,
                Hold.closed_at,
            )
            .where(Hold.partner_id == side.partner.id)
            .order_by(Hold.reference)
        ).all()
    rows = [(side.members.index(h[0]), *h[1:]) for h in holds]
    return bulk_state(db, side), rows
