"""What each event of the simulated period does, through :class:`~partners.operations.Operations`
in the batch's session: a member joins, shops (its receipt waits for the partner's upload, a
bulk earn), redeems, holds points at a checkout; a partner refunds or pays for a promotion; the
operator welcomes, corrects and claws back.

Each handler returns whether it performed an operation to count (earns are counted one by one
when uploaded); an operation the rules refuse raises its
:class:`~coalition.errors.CoalitionError`, which the simulation counts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from cli.simulation.world import (
    AFFINITY,
    COALITION_BONUSES,
    HOLD_EXPIRY_S,
    HOLD_OUTCOMES,
    PARTNER_BONUSES,
    PARTNERS,
    SPECS,
    PartnerSpec,
)
from coalition.errors import CoalitionError, InvariantViolated, required
from coalition.money import quantum
from partners.operations import EARN_BATCH_MAX, EarnItem

if TYPE_CHECKING:
    from cli.simulation.period import Event, Simulation

Handler = Callable[["Simulation", Session, "Event"], bool]


@dataclass(slots=True)
class SimMember:
    """A member of the demo: how active, and at which partners (and how often) it shops."""

    id: str
    activity: float
    earns_at: tuple[list[str], list[int]]  # partner slugs and weights


# --- helpers ------------------------------------------------------------------------------


def _ref(sim: Simulation, prefix: str) -> str:
    return f"{prefix}-{next(sim.refs):06d}"


def _amount(sim: Simulation, spec: PartnerSpec) -> Decimal:
    """A basket at the partner, log-uniform in its typical range."""
    low, high = required(spec.basket, f"{spec.slug} takes purchases")
    raw = Decimal(low * (high / low) ** sim.rng.random())
    return raw.quantize(quantum(spec.currency), rounding=ROUND_FLOOR)


def _note(sim: Simulation, member_id: str, available: int) -> None:
    sim.available[member_id] = available


def _member(event: Event) -> str:
    return required(event.member, f"a {event.kind} event names its member")


def _text(event: Event, name: str) -> str:
    value = event.args[name]
    if not isinstance(value, str):
        raise InvariantViolated(f"a {event.kind} event's {name} is text, not {value!r}")
    return value


def _pick_burn_partner(sim: Simulation, available: int, exclude: Iterable[str] = ()) -> PartnerSpec:
    """Where a member spends: weighted, among partners whose smallest reward it affords."""
    skip = set(exclude)
    options = [p for p in PARTNERS if p.slug not in skip and p.min_burn <= available]
    if not options:
        return SPECS["charity"]
    return sim.rng.choices(options, weights=[p.burn_weight for p in options])[0]


def _shops_instead(sim: Simulation, member_id: str, minimum: int) -> bool:
    """A member short of the smallest reward mostly just shops; a few try anyway."""
    return sim.available.get(member_id, 0) < minimum and sim.rng.random() < 0.9


def _burned(sim: Simulation, slug: str, txn_id: str, points: int) -> None:
    sim.recent_burns[slug].append((txn_id, points))


# --- members ------------------------------------------------------------------------------


def join(sim: Simulation, s: Session, event: Event) -> bool:
    """A member joins: where it shops, how active it is; the sign-up bonus follows."""
    member_id, _ = sim.ops.create_member(session=s)
    earns_at = [p for p in PARTNERS if p.earn_weight and sim.rng.random() < AFFINITY[p.slug]]
    if not earns_at:
        earns_at = [SPECS["grocer"]]
    member = SimMember(
        member_id,
        activity=sim.rng.lognormvariate(0, 0.8),
        earns_at=([p.slug for p in earns_at], [p.earn_weight for p in earns_at]),
    )
    sim.members.append(member)
    sim.member_index[member_id] = member
    sim.available[member_id] = 0
    # The coalition welcomes every member with 50 points.
    sim.push(event.at + timedelta(seconds=1), "coalition_bonus", member_id, reason="sign-up")
    return True


def earn(sim: Simulation, s: Session, event: Event) -> bool:
    """A purchase: its receipt waits for the partner's next upload (a bulk earn)."""
    member = sim.member_index[_member(event)]
    slugs, weights = member.earns_at
    spec = SPECS[sim.rng.choices(slugs, weights=weights)[0]]
    occurred = event.at
    if sim.rng.random() < 0.05:
        # A receipt the till sent late (offline till): earned at the rate then in force.
        late = event.at - timedelta(hours=sim.rng.uniform(1, 72))
        occurred = max(late, sim.start + timedelta(minutes=1))
    item = EarnItem(member.id, _ref(sim, "rcpt"), str(_amount(sim, spec)), spec.currency, occurred)
    sim.receipts.append((spec.slug, event, item))
    return False  # counted when uploaded


def upload(sim: Simulation, s: Session, event: Event) -> bool:
    """Each partner's receipts since its last upload, as one bulk earn (``earn_many``)."""
    by_partner: dict[str, list[EarnItem]] = {}
    for slug, _, item in sim.receipts:
        by_partner.setdefault(slug, []).append(item)
    sim.receipts.clear()
    for slug, items in by_partner.items():
        for start in range(0, len(items), EARN_BATCH_MAX):
            chunk = items[start : start + EARN_BATCH_MAX]
            results = sim.ops.earn_many(sim.partners[slug].id, chunk, session=s)
            sim.bulk_batches += 1
            for item, result in zip(chunk, results, strict=True):
                if isinstance(result, CoalitionError):
                    sim.errors[("earn", result.code)] += 1
                    continue
                sim.done["earn"] += 1
                sim.bulk_earns += 1
                _note(sim, item.member_id, result.member.available)
                txn = result.transaction
                sim.recent_earns[slug].append((txn.id, txn.points))
    return False  # the earns are counted one by one


def burn_points(sim: Simulation, s: Session, event: Event) -> bool:
    """A reward redeemed for points (now and then more than the member has)."""
    member_id = _member(event)
    if _shops_instead(sim, member_id, 50):
        return earn(sim, s, event)
    available = sim.available.get(member_id, 0)
    spec = _pick_burn_partner(sim, available)
    step = spec.min_burn
    if sim.rng.random() < 0.04:
        points = max(available, 0) + sim.rng.randint(1, 400)  # more than the member has
    else:
        share = sim.rng.uniform(0.3, 1.0)
        points = max(step, int(available * share) // step * step)
    reference = _ref(sim, "redeem" if spec.slug != "charity" else "donation")
    return _burn(sim, s, spec, member_id, reference, points=points)


def burn_amount(sim: Simulation, s: Session, event: Event) -> bool:
    """Pay part of a basket with points; the partner's cap bounds the share."""
    member_id = _member(event)
    if _shops_instead(sim, member_id, 100):
        return earn(sim, s, event)
    available = sim.available.get(member_id, 0)
    spec = _pick_burn_partner(sim, available, exclude=("airline", "charity"))
    if spec.basket is None:
        return burn_points(sim, s, event)
    basket = _amount(sim, spec)
    cap = Decimal(spec.max_burn_share or "1")
    wanted = cap * Decimal(sim.rng.uniform(0.3, 1.0))
    if sim.rng.random() < 0.06:
        wanted = min(cap * Decimal("1.5"), Decimal(1))  # a till that ignores the cap
    worth = Decimal(max(available, 0)) * Decimal(spec.burn_value_per_point)
    amount = min(basket * wanted, worth).quantize(quantum(spec.currency), rounding=ROUND_FLOOR)
    if amount <= 0:
        amount = quantum(spec.currency) * 100  # a member with nothing to pay with
    return _burn(sim, s, spec, member_id, _ref(sim, "pay"), amount=amount, basket=basket)


def _burn(
    sim: Simulation,
    s: Session,
    spec: PartnerSpec,
    member_id: str,
    reference: str,
    *,
    points: int | None = None,
    amount: Decimal | None = None,
    basket: Decimal | None = None,
) -> bool:
    """A burn at the partner, given points or an amount of a basket; kept as a candidate for a
    reversal."""
    posted = sim.ops.burn(
        sim.partners[spec.slug].id,
        member_id=member_id,
        reference=reference,
        points=points,
        amount=None if amount is None else str(amount),
        currency=None if amount is None else spec.currency,
        basket_amount=None if basket is None else str(basket),
        session=s,
    )
    _burned(sim, spec.slug, posted.transaction.id, posted.transaction.points)
    _note(sim, member_id, posted.member.available)
    return True


def hold(sim: Simulation, s: Session, event: Event) -> bool:
    """Points held at an online checkout (a seat upgrade, a book order)."""
    member_id = _member(event)
    if _shops_instead(sim, member_id, 100):
        return earn(sim, s, event)
    available = sim.available.get(member_id, 0)
    spec = SPECS[sim.rng.choice(("airline", "books"))]
    if available < spec.min_burn:
        spec = SPECS["books"]
    points = max(spec.min_burn, int(available * sim.rng.uniform(0.3, 0.9)))
    result = sim.ops.hold(
        sim.partners[spec.slug].id,
        member_id=member_id,
        reference=_ref(sim, "order"),
        points=points,
        expires_in=HOLD_EXPIRY_S,
        session=s,
    )
    _note(sim, member_id, result.member.available)
    # The first holds show every outcome once, whatever the demo's size; then by weight.
    outcome = (
        next(sim.first_hold_outcomes, None)
        or sim.rng.choices([o for o, _ in HOLD_OUTCOMES], weights=[w for _, w in HOLD_OUTCOMES])[0]
    )
    if outcome != "expire":
        later = event.at + timedelta(seconds=sim.rng.uniform(60, HOLD_EXPIRY_S * 0.8))
        sim.push(
            later,
            "void" if outcome == "void" else "capture",
            member_id,
            hold_id=result.hold.id,
            slug=spec.slug,
            points=(
                max(1, int(result.hold.points * sim.rng.uniform(0.5, 0.95)))
                if outcome == "capture_part"
                else None
            ),
        )
    return True


def capture(sim: Simulation, s: Session, event: Event) -> bool:
    """A held checkout completes: the hold captured, in full or in part."""
    slug, points = _text(event, "slug"), event.args["points"]
    if points is not None and not isinstance(points, int):
        raise InvariantViolated(f"a capture's points are a number, not {points!r}")
    posted = sim.ops.capture(
        sim.partners[slug].id, _text(event, "hold_id"), points=points, session=s
    )
    _burned(sim, slug, posted.transaction.id, posted.transaction.points)
    _note(sim, posted.member.member_id, posted.member.available)
    return True


def void(sim: Simulation, s: Session, event: Event) -> bool:
    """A held checkout abandoned: the hold voided."""
    result = sim.ops.void(sim.partners[_text(event, "slug")].id, _text(event, "hold_id"), session=s)
    _note(sim, result.member.member_id, result.member.available)
    return True


# --- partners -----------------------------------------------------------------------------


def _reverse(sim: Simulation, s: Session, slug: str, recent: deque[tuple[str, int]]) -> bool:
    """A refund: reverse a recent transaction of the partner, in full or in part."""
    if not recent:
        return False
    txn_id, points = recent.popleft() if sim.rng.random() < 0.5 else recent.pop()
    part = None
    if points > 1 and sim.rng.random() < 0.5:
        part = sim.rng.randint(1, points - 1)
    posted = sim.ops.reverse(
        sim.partners[slug].id, txn_id, reference=_ref(sim, "refund"), points=part, session=s
    )
    _note(sim, posted.member.member_id, posted.member.available)
    return True


def reverse_earn(sim: Simulation, s: Session, event: Event) -> bool:
    """A purchase returned. Refunds come in proportion to a partner's sales."""
    slug = sim.rng.choices([p.slug for p in PARTNERS], [p.earn_weight for p in PARTNERS])[0]
    return _reverse(sim, s, slug, sim.recent_earns[slug])


def reverse_burn(sim: Simulation, s: Session, event: Event) -> bool:
    """A redemption cancelled: its points given back."""
    slug = sim.rng.choices([p.slug for p in PARTNERS], [p.burn_weight for p in PARTNERS])[0]
    return _reverse(sim, s, slug, sim.recent_burns[slug])


def partner_bonus(sim: Simulation, s: Session, event: Event) -> bool:
    """A promotion a partner pays for (billed at its issue price)."""
    member_id = _member(event)
    slug, points, reason = sim.rng.choice(PARTNER_BONUSES)
    posted = sim.ops.bonus(
        member_id=member_id,
        points=points,
        reason=reason,
        funded_by=sim.partners[slug].id,
        session=s,
    )
    _note(sim, member_id, posted.member.available)
    return True


# --- the operator -------------------------------------------------------------------------


def coalition_bonus(sim: Simulation, s: Session, event: Event) -> bool:
    """The operator's own bonuses: sign-up, referral, newsletter."""
    member_id = _member(event)
    reason = event.args.get("reason") or sim.rng.choice(("referral", "newsletter"))
    posted = sim.ops.bonus(
        member_id=member_id,
        points=COALITION_BONUSES[str(reason)],
        reason=f"{reason} bonus",
        funded_by="coalition",
        session=s,
    )
    _note(sim, member_id, posted.member.available)
    return True


def adjust(sim: Simulation, s: Session, event: Event) -> bool:
    """An operator's correction: goodwill points, or a duplicate receipt taken back."""
    if not sim.members:
        return False
    member = sim.rng.choice(sim.members)
    available = sim.available.get(member.id, 0)
    if sim.rng.random() < 0.5 or available < 20:
        points, reason = 250, "goodwill: delayed refund, see ticket"
    else:
        points, reason = -min(available, 120), "correction: receipt counted twice"
    posted = sim.ops.adjust(member_id=member.id, points=points, reason=reason, session=s)
    _note(sim, member.id, posted.member.available)
    return True


def clawback(sim: Simulation, s: Session, event: Event) -> bool:
    """A big purchase, its points spent at once, then the purchase returned: a clawback."""
    step = event.args["step"]
    if step == 1:
        return _big_purchase(sim, s, event)
    if step == 2:
        return _spend_it_all(sim, s, event)
    member_id = event.member or ""
    posted = sim.ops.reverse(
        sim.partners["grocer"].id, _text(event, "earn"), reference=_ref(sim, "return"), session=s
    )
    _note(sim, member_id, posted.member.available)
    return True


def _big_purchase(sim: Simulation, s: Session, event: Event) -> bool:
    if not sim.members:
        return False
    member = sim.rng.choice(sim.members)
    posted = sim.ops.earn(
        sim.partners["grocer"].id,
        member_id=member.id,
        reference=_ref(sim, "rcpt"),
        amount="480.00",
        currency="EUR",
        session=s,
    )
    _note(sim, member.id, posted.member.available)
    later = event.at + timedelta(minutes=30)
    sim.push(later, "clawback", member.id, step=2, earn=posted.transaction.id)
    return True


def _spend_it_all(sim: Simulation, s: Session, event: Event) -> bool:
    member_id = _member(event)
    spend = sim.available.get(member_id, 0) // 100 * 100
    if spend > 0:
        posted = sim.ops.burn(
            sim.partners["airline"].id,
            member_id=member_id,
            reference=_ref(sim, "redeem"),
            points=spend,
            session=s,
        )
        _note(sim, member_id, posted.member.available)
    # The purchase comes back an hour later: its points are spent already.
    later = event.at + timedelta(hours=1)
    sim.push(later, "clawback", member_id, step=3, earn=event.args["earn"])
    return True


#: What each kind of event does.
HANDLERS: dict[str, Handler] = {
    "join": join,
    "earn": earn,
    "upload": upload,
    "burn_points": burn_points,
    "burn_amount": burn_amount,
    "hold": hold,
    "capture": capture,
    "void": void,
    "reverse_earn": reverse_earn,
    "reverse_burn": reverse_burn,
    "partner_bonus": partner_bonus,
    "coalition_bonus": coalition_bonus,
    "adjust": adjust,
    "clawback": clawback,
}
