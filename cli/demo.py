"""``coalition demo``: a demo coalition on an empty database, with a period of traffic.

Five partners in four currencies (one without minor units), a few hundred members and a
simulated period of earns, burns, holds, reversals, bonuses, adjustments and expiry (tens of
thousands of operations), all driven through :class:`~partners.operations.Operations` on a
simulated clock. The traffic takes the batched path: hundreds of operations per database
transaction, each under its own savepoint, so an operation the rules refuse (a typed
:class:`~coalition.errors.CoalitionError`) rolls back alone and is counted. Earns, most of the
traffic, wait for their partner's next upload (:data:`EARN_UPLOAD_HOURS`) and go to the ledger
as one bulk earn per partner (``Operations.earn_many``), refused items counted one by one.
The program validity is shortened to :data:`DEMO_VALIDITY_DAYS` so that the period shows
breakage. The period is then closed, paid and reconciled (bank details under four eyes, a
payment run's files and the bank's camt.053 in ``payments/``, imported: every statement ends
settled). The run ends with a summary and every ledger invariant checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import itertools
import json
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from cli.runtime import runtime
from coalition.config import Settings
from coalition.db import migrate, transaction, utcnow
from coalition.errors import CoalitionError
from coalition.ledger.kinds import KINDS, Flow
from coalition.models import Member, Transaction
from coalition.money import quantum
from coalition.progress import progress
from partners.keys import NewKey, create_key, has_operator_key
from partners.models import PARTNER_SCOPES, Partner, RateCard
from partners.operations import EARN_BATCH_MAX, EarnItem, Operations
from partners.rates import create_partner, create_rate_card
from settlement import reports, workflow
from settlement.bankfiles import BankEntry, write_camt053
from settlement.canonical import b64url, csv_export, json_export, read_export, verify_document
from settlement.check import run_checks
from settlement.close import close, statements_of
from settlement.payments import bank_accounts, reconcile, runs
from settlement.reports import liability_at
from settlement.signing import public_keys
from settlement.statements import document_of
from settlement.workflow import Actor

#: The program validity the demo runs with (the configured one is usually 36 months).
DEMO_VALIDITY_DAYS = 30
#: The simulated period, ending at the current hour.
PERIOD_DAYS = 60
#: Operations per member per day, on average (members differ a lot around it); most are earns.
OPS_PER_MEMBER_DAY = 1.05
#: The hours (of each day) at which the partners' tills send the receipts since the last
#: upload: each partner's receipts go to the ledger as one bulk earn (``earn_many``).
EARN_UPLOAD_HOURS = (23,)
#: Operations per batch transaction (one savepoint each).
COMMIT_EVERY = 300
#: The day the grocer's new rate card (a double-points promotion) takes effect.
RATE_CHANGE_DAY = 30
#: Holds stay open this long unless captured or voided.
HOLD_EXPIRY_S = 1800
#: Recent earns and burns kept per partner as candidates for reversals.
RECENT = 300

Echo = Callable[[str], None]
#: ``progress(days_done, days)``: called after each simulated day (a progress bar's hook).
DayProgress = Callable[[int, int], None]


# --- the coalition ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartnerSpec:
    """A demo partner: its rate card, its typical basket and how much traffic it sees."""

    slug: str
    name: str
    currency: str
    earn_points_per_unit: str
    issue_price_per_point: str
    burn_value_per_point: str
    reimburse_price_per_point: str
    max_burn_share: str | None
    basket: tuple[int, int] | None  # typical purchase, major units; None: takes no purchases
    earn_weight: int
    burn_weight: int
    min_burn: int  # the smallest redemption offered, in points


# Economics (product.md): a point is worth about EUR 0.01; members earn 1-4% of spend; the
# issue price is above the reimbursement, the spread (and breakage) is the operator's margin.
PARTNERS = (
    PartnerSpec("grocer", "Fresh & Co. Grocers", "EUR", "1", "0.01", "0.01", "0.008", "0.5",
                (8, 140), earn_weight=50, burn_weight=25, min_burn=100),
    PartnerSpec("airline", "Sakura Air", "JPY", "0.02", "1.6", "1.5", "1.2", None,
                (9_000, 160_000), earn_weight=8, burn_weight=25, min_burn=500),
    PartnerSpec("fuel", "Route 9 Fuel", "USD", "1", "0.011", "0.011", "0.009", "0.2",
                (25, 95), earn_weight=25, burn_weight=15, min_burn=100),
    PartnerSpec("books", "Marlowe Books", "GBP", "2", "0.009", "0.008", "0.0065", "1",
                (6, 60), earn_weight=17, burn_weight=15, min_burn=100),
    PartnerSpec("charity", "Kind Hearts Foundation", "EUR", "0", "0.01", "0.01", "0.01", None,
                None, earn_weight=0, burn_weight=10, min_burn=50),
)  # fmt: skip
#: From RATE_CHANGE_DAY the grocer runs double points, billed at a volume discount.
GROCER_PROMOTION = {"earn_points_per_unit": "2", "issue_price_per_point": "0.0095"}

#: What happens to a hold: captured in full, in part, voided, or left to expire.
HOLD_OUTCOMES = (("capture", 55), ("capture_part", 15), ("void", 15), ("expire", 15))

#: The traffic mix: operation and weight.
TRAFFIC = (
    ("earn", 3000),
    ("burn_points", 110),
    ("burn_amount", 70),
    ("hold", 60),
    ("reverse_earn", 22),
    ("reverse_burn", 20),
    ("partner_bonus", 20),
    ("coalition_bonus", 10),
)


@dataclass
class SimClock:
    """The time the operations see; the simulation moves it forward only."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def to(self, at: datetime) -> None:
        """Move to ``at`` (never back)."""
        self.now = max(self.now, at)


@dataclass(frozen=True, slots=True)
class DemoKeys:
    """The API keys the demo created: the operator's (unless one existed) and each partner's."""

    operator: NewKey | None
    partners: dict[str, NewKey]
    currencies: dict[str, str] = dataclasses.field(default_factory=dict)
    #: A member of the demo, for an example request.
    member_id: str | None = None


@dataclass(order=True, slots=True)
class _Event:
    at: datetime
    seq: int
    kind: str = field(compare=False)
    member: str | None = field(compare=False, default=None)
    args: dict[str, object] = field(compare=False, default_factory=dict)


@dataclass(slots=True)
class DemoResult:
    """What a demo run did, for the summary and the benchmarks."""

    operations: int
    errors: int
    traffic_s: float
    traffic_cpu_s: float
    elapsed_s: float
    invariants_ok: bool
    bulk_earns: int = 0
    bulk_batches: int = 0


# --- entry points -------------------------------------------------------------------------


def run_demo(
    settings: Settings,
    engine: Engine,
    sessions: sessionmaker[Session],
    *,
    seed: int = 7,
    members: int = 400,
    echo: Echo = print,
    describe_api: DescribeApi | None = None,
    progress: DayProgress | None = None,
) -> int:
    """Run the demo (see the module's docstring); 0 when every invariant holds, else 1.

    Refuses (1) when the database already has partners: the demo needs an empty database.
    """
    result = demo(
        settings,
        engine,
        sessions,
        seed=seed,
        members=members,
        echo=echo,
        describe_api=describe_api,
        progress=progress,
    )
    return 0 if result is not None and result.invariants_ok else 1


def demo(
    settings: Settings,
    engine: Engine,
    sessions: sessionmaker[Session],
    *,
    seed: int,
    members: int,
    echo: Echo = print,
    describe_api: DescribeApi | None = None,
    progress: DayProgress | None = None,
) -> DemoResult | None:
    """Run the demo and return what it did; ``None`` when the database is not empty."""
    started = time.perf_counter()
    if members < 1:
        raise ValueError("the demo needs at least one member")
    migrate(engine)
    with transaction(sessions) as s:
        existing = s.scalar(select(func.count()).select_from(Partner)) or 0
    if existing:
        url = engine.url.render_as_string(hide_password=True)
        echo(
            f"The demo needs an empty database, and {url} already has {existing} partner(s).\n"
            "Run it in an empty directory (the default database is ./coalition.sqlite3 in the "
            "working directory, or `./dev demo`, which starts from a fresh one), or point "
            "COALITION_DATABASE_URL at a new, empty database."
        )
        return None
    demo_settings = dataclasses.replace(settings, points_validity_days=DEMO_VALIDITY_DAYS)
    end = utcnow().replace(minute=0, second=0, microsecond=0)
    sim = _Simulation(demo_settings, sessions, random.Random(seed), end, members)  # noqa: S311 (a demo)
    sim.found_coalition()
    keys = _create_keys(settings, sessions)
    traffic_started, traffic_cpu = time.perf_counter(), time.process_time()
    sim.run(progress)
    traffic_s = time.perf_counter() - traffic_started
    traffic_cpu_s = time.process_time() - traffic_cpu
    echo(_header(settings, sim, members, seed))
    echo(f"Database: {engine.url.render_as_string(hide_password=True)}")
    with transaction(sessions) as s:
        for line in _summary(s, sim, end):
            echo(line)
    settlement_lines, settled_ok = _settlement(settings, sessions, sim, end)
    for line in settlement_lines:
        echo(line)
    payment_lines, paid_ok = _payments(settings, sessions, sim)
    for line in payment_lines:
        echo(line)
    settled_ok = settled_ok and paid_ok
    operations, errors = sim.operation_count(), sum(sim.errors.values())
    echo("")
    echo(
        "Operations (through Operations, batched: one savepoint each; "
        f"{sim.bulk_earns:,} of the earns in {sim.bulk_batches:,} bulk earns, "
        "a partner's receipts since its last upload each)"
    )
    for line in _operations_table(sim):
        echo(line)
    if sim.members:
        keys = dataclasses.replace(keys, member_id=sim.members[0].id)
    for line in (describe_api or api_example)(settings, keys):
        echo(line)
    with transaction(sessions) as s:
        findings = run_checks(s)
    echo("")
    echo("Invariants (coalition check)")
    for finding in findings:
        echo(f"  [{'ok' if finding.ok else 'VIOLATED'}] {finding.invariant}. {finding.name}")
        for violation in finding.violations:
            echo(f"        {violation}")
    ok = all(f.ok for f in findings) and settled_ok
    elapsed_s = time.perf_counter() - started
    echo("")
    echo(
        f"Elapsed: {elapsed_s:.1f} s in all; the traffic {traffic_s:.1f} s "
        f"({operations} operations, {operations / traffic_s:.0f} per second)."
    )
    echo("All invariants hold." if ok else "INVARIANTS VIOLATED: see above.")
    return DemoResult(
        operations,
        errors,
        traffic_s,
        traffic_cpu_s,
        elapsed_s,
        ok,
        bulk_earns=sim.bulk_earns,
        bulk_batches=sim.bulk_batches,
    )


def api_example(settings: Settings, keys: DemoKeys) -> list[str]:
    """The keys the demo created, each secret shown this once.

    The CLI passes a richer ``describe_api`` (api/example.py: a ready-to-run signed request);
    this layer cannot import the API.
    """
    lines = ["", "API keys (hmac-sha256; each secret is shown this once, keep it if you need it)"]
    if keys.operator is None:
        lines.append("  operator: a key exists already (`coalition init` printed it)")
    else:
        lines.append(f"  operator key id: {keys.operator.key.id}")
        lines.append(f"  operator secret: {keys.operator.secret}")
    for slug, new in keys.partners.items():
        lines.append(f"  {slug:<8} key id: {new.key.id}  secret: {new.secret}")
    lines.append(f"  the API answers at {settings.public_url}/v1 once `coalition serve` runs")
    return lines


def _create_keys(settings: Settings, sessions: sessionmaker[Session]) -> DemoKeys:
    now = utcnow()
    with transaction(sessions) as s:
        operator = None
        if not has_operator_key(s):
            operator = create_key(
                s,
                secret_key=settings.secret_key,
                role="operator",
                partner_id=None,
                alg="hmac-sha256",
                scopes=[],
                public_key=None,
                expires_at=None,
                now=now,
            )
        partner_keys = {}
        currencies = {}
        for partner in s.scalars(select(Partner).order_by(Partner.created_at, Partner.id)):
            slug = next(p.slug for p in PARTNERS if p.name == partner.name)
            currencies[slug] = partner.currency
            partner_keys[slug] = create_key(
                s,
                secret_key=settings.secret_key,
                role="partner",
                partner_id=partner.id,
                alg="hmac-sha256",
                scopes=list(PARTNER_SCOPES),
                public_key=None,
                expires_at=None,
                now=now,
            )
    return DemoKeys(operator, partner_keys, currencies)


#: Lines the demo prints about the API, given the keys it made.
DescribeApi = Callable[[Settings, DemoKeys], list[str]]


# --- the simulation -----------------------------------------------------------------------


@dataclass(slots=True)
class _Member:
    id: str
    activity: float
    earns_at: tuple[list[str], list[int]]  # partner slugs and weights


class _Simulation:
    """The simulated period: events on a clock, dispatched to :class:`Operations`."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        rng: random.Random,
        end: datetime,
        members: int,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.rng = rng
        self.end = end
        self.start = end - timedelta(days=PERIOD_DAYS)
        self.clock = SimClock(self.start)
        self.ops = Operations(settings, sessions, self.clock)
        self.member_target = members
        self.partners: dict[str, Partner] = {}
        self.specs = {p.slug: p for p in PARTNERS}
        self.members: list[_Member] = []
        self.member_index: dict[str, _Member] = {}
        self.available: dict[str, int] = {}
        self.recent_earns: dict[str, deque[tuple[str, int]]] = {}
        self.recent_burns: dict[str, deque[tuple[str, int]]] = {}
        self.queue: list[_Event] = []
        self.seq = itertools.count()
        self.refs = itertools.count(1)
        self.done: Counter[str] = Counter()
        self.errors: Counter[tuple[str, str]] = Counter()
        self.expired_holds = 0
        self.first_hold_outcomes = iter([o for o, _ in HOLD_OUTCOMES])
        self.expiry_runs = 0
        # Receipts waiting for their partner's next upload: (partner slug, event, item).
        self.receipts: list[tuple[str, _Event, EarnItem]] = []
        self.bulk_earns = 0
        self.bulk_batches = 0
        self.handlers: dict[str, Callable[[Session, _Event], bool]] = {
            "join": self._join,
            "earn": self._earn,
            "upload": self._upload,
            "burn_points": self._burn_points,
            "burn_amount": self._burn_amount,
            "hold": self._hold,
            "capture": self._capture,
            "void": self._void,
            "reverse_earn": self._reverse_earn,
            "reverse_burn": self._reverse_burn,
            "partner_bonus": self._partner_bonus,
            "coalition_bonus": self._coalition_bonus,
            "adjust": self._adjust,
            "clawback": self._clawback,
        }

    # --- set-up and the main loop ---------------------------------------------------------

    def found_coalition(self) -> None:
        """Onboard the partners with their first rate cards, in force from the start."""
        with transaction(self.sessions) as s:
            for spec in PARTNERS:
                partner = create_partner(s, name=spec.name, currency=spec.currency, now=self.start)
                self._rate_card(s, partner.id, spec, {}, effective_from=self.start)
                self.partners[spec.slug] = partner
                self.recent_earns[spec.slug] = deque(maxlen=RECENT)
                self.recent_burns[spec.slug] = deque(maxlen=RECENT)

    def _rate_card(
        self,
        s: Session,
        partner_id: str,
        spec: PartnerSpec,
        changes: dict[str, str],
        effective_from: datetime,
    ) -> RateCard:
        rates = {
            "earn_points_per_unit": spec.earn_points_per_unit,
            "issue_price_per_point": spec.issue_price_per_point,
            "burn_value_per_point": spec.burn_value_per_point,
            "reimburse_price_per_point": spec.reimburse_price_per_point,
            **changes,
        }
        return create_rate_card(
            s,
            partner_id,
            **{name: Decimal(value) for name, value in rates.items()},
            max_burn_share=Decimal(spec.max_burn_share) if spec.max_burn_share else None,
            effective_from=effective_from,
            now=self.clock(),
        )

    def run(self, progress: DayProgress | None = None) -> None:
        """Simulate the period day by day; run the expiry jobs at the end of each day."""
        self._schedule_joins()
        self._schedule_operator_work()
        for day in range(PERIOD_DAYS):
            day_start = self.start + timedelta(days=day)
            if day == RATE_CHANGE_DAY - 3:
                self._announce_promotion(day_start)
            self._schedule_day(day_start)
            self._run_until(day_start + timedelta(days=1))
            self._run_jobs(day_start + timedelta(days=1))
            if progress is not None:
                progress(day + 1, PERIOD_DAYS)

    def _run_until(self, until: datetime) -> None:
        while self.queue and self.queue[0].at < until:
            with self.ops.batch() as s:
                # Loaded once per batch and held, the partners are found in the session's
                # identity map by every operation of the batch instead of read each time.
                pinned = s.scalars(select(Partner)).all()
                for _ in range(COMMIT_EVERY):
                    if not self.queue or self.queue[0].at >= until:
                        break
                    event = heapq.heappop(self.queue)
                    self.clock.to(event.at)
                    self._dispatch(s, event)
                del pinned

    def _dispatch(self, s: Session, event: _Event) -> None:
        try:
            performed = self.handlers[event.kind](s, event)
        except CoalitionError as exc:
            # The operation's savepoint rolled back; nothing of it remains.
            self.errors[(event.kind, exc.code)] += 1
        else:
            if performed:
                self.done[event.kind] += 1

    def _run_jobs(self, at: datetime) -> None:
        """The scheduled jobs (hold and points expiry), each in its own transactions."""
        self.clock.to(at)
        self.expired_holds += self.ops.expire_holds(at)
        self.expiry_runs += self.ops.expire_points(at)
        with transaction(self.sessions) as s:
            rows = s.execute(select(Member.id, Member.balance - Member.held))
            self.available.update({member_id: available for member_id, available in rows})

    def operation_count(self) -> int:
        """Operations attempted through :class:`Operations` (done or refused), and expiries."""
        return sum(self.done.values()) + sum(self.errors.values()) + self.expiry_runs

    # --- scheduling -----------------------------------------------------------------------

    def _push(self, at: datetime, kind: str, member: str | None = None, **args: object) -> None:
        heapq.heappush(self.queue, _Event(at, next(self.seq), kind, member, dict(args)))

    def _shop_time(self, day_start: datetime) -> datetime:
        """A moment in opening hours (07:00 to 22:00)."""
        return day_start + timedelta(hours=7, seconds=self.rng.random() * 15 * 3600)

    def _schedule_joins(self) -> None:
        """Most members are there from the first day; the rest join during the first month."""
        for _ in range(self.member_target):
            day = 0 if self.rng.random() < 0.7 else self.rng.randrange(1, 30)
            self._push(self._shop_time(self.start + timedelta(days=day)), "join")

    def _schedule_operator_work(self) -> None:
        """A few adjustments by the operator and one clawback story."""
        for day in (5, 12, 19, 26, 33, 41, 48, 55):
            self._push(self._shop_time(self.start + timedelta(days=day)), "adjust")
        for day in (20, 40):
            self._push(self._shop_time(self.start + timedelta(days=day)), "clawback", step=1)

    def _schedule_day(self, day_start: datetime) -> None:
        joined = self.members
        if not joined:
            return
        count = round(OPS_PER_MEMBER_DAY * len(joined))
        who = self.rng.choices(joined, weights=[m.activity for m in joined], k=count)
        kinds = self.rng.choices([k for k, _ in TRAFFIC], weights=[w for _, w in TRAFFIC], k=count)
        for member, kind in zip(who, kinds, strict=True):
            self._push(self._shop_time(day_start), kind, member.id)
        for hour in EARN_UPLOAD_HOURS:
            self._push(day_start + timedelta(hours=hour), "upload")

    def _announce_promotion(self, day_start: datetime) -> None:
        """The operator versions the grocer's rate card ahead of the promotion."""
        self.clock.to(day_start + timedelta(hours=6))
        with transaction(self.sessions) as s:
            self._rate_card(
                s,
                self.partners["grocer"].id,
                self.specs["grocer"],
                GROCER_PROMOTION,
                effective_from=self.start + timedelta(days=RATE_CHANGE_DAY),
            )

    # --- helpers --------------------------------------------------------------------------

    def _ref(self, prefix: str) -> str:
        return f"{prefix}-{next(self.refs):06d}"

    def _amount(self, spec: PartnerSpec) -> Decimal:
        """A basket at the partner, log-uniform in its typical range."""
        assert spec.basket is not None
        low, high = spec.basket
        raw = Decimal(low * (high / low) ** self.rng.random())
        return raw.quantize(quantum(spec.currency), rounding=ROUND_FLOOR)

    def _note(self, member_id: str, available: int) -> None:
        self.available[member_id] = available

    def _pick_burn_partner(self, available: int, exclude: Iterable[str] = ()) -> PartnerSpec:
        """Where a member spends: weighted, among partners whose smallest reward it affords."""
        skip = set(exclude)
        options = [p for p in PARTNERS if p.slug not in skip and p.min_burn <= available]
        if not options:
            return self.specs["charity"]
        return self.rng.choices(options, weights=[p.burn_weight for p in options])[0]

    # --- the operations -------------------------------------------------------------------

    def _join(self, s: Session, event: _Event) -> bool:
        member_id, _ = self.ops.create_member(session=s)
        earns_at = [p for p in PARTNERS if p.earn_weight and self.rng.random() < _AFFINITY[p.slug]]
        if not earns_at:
            earns_at = [self.specs["grocer"]]
        member = _Member(
            member_id,
            activity=self.rng.lognormvariate(0, 0.8),
            earns_at=([p.slug for p in earns_at], [p.earn_weight for p in earns_at]),
        )
        self.members.append(member)
        self.member_index[member_id] = member
        self.available[member_id] = 0
        # The coalition welcomes every member with 50 points.
        self._push(event.at + timedelta(seconds=1), "coalition_bonus", member_id, reason="sign-up")
        return True

    def _earn(self, s: Session, event: _Event) -> bool:
        """A purchase: its receipt waits for the partner's next upload (a bulk earn)."""
        assert event.member is not None
        member = self.member_index[event.member]
        slugs, weights = member.earns_at
        spec = self.specs[self.rng.choices(slugs, weights=weights)[0]]
        occurred = event.at
        if self.rng.random() < 0.05:
            # A receipt the till sent late (offline till): earned at the rate then in force.
            late = event.at - timedelta(hours=self.rng.uniform(1, 72))
            occurred = max(late, self.start + timedelta(minutes=1))
        item = EarnItem(
            member.id, self._ref("rcpt"), str(self._amount(spec)), spec.currency, occurred
        )
        self.receipts.append((spec.slug, event, item))
        return False  # counted when uploaded

    def _upload(self, s: Session, event: _Event) -> bool:
        """Each partner's receipts since its last upload, as one bulk earn (``earn_many``)."""
        by_partner: dict[str, list[EarnItem]] = {}
        for slug, _, item in self.receipts:
            by_partner.setdefault(slug, []).append(item)
        self.receipts.clear()
        for slug, items in by_partner.items():
            for start in range(0, len(items), EARN_BATCH_MAX):
                chunk = items[start : start + EARN_BATCH_MAX]
                results = self.ops.earn_many(self.partners[slug].id, chunk, session=s)
                self.bulk_batches += 1
                for item, result in zip(chunk, results, strict=True):
                    if isinstance(result, CoalitionError):
                        self.errors[("earn", result.code)] += 1
                        continue
                    self.done["earn"] += 1
                    self.bulk_earns += 1
                    self._note(item.member_id, result.member.available)
                    txn = result.transaction
                    self.recent_earns[slug].append((txn.id, txn.points))
        return False  # the earns are counted one by one

    def _shops_instead(self, member_id: str, minimum: int) -> bool:
        """A member short of the smallest reward mostly just shops; a few try anyway."""
        return self.available.get(member_id, 0) < minimum and self.rng.random() < 0.9

    def _burn_points(self, s: Session, event: _Event) -> bool:
        assert event.member is not None
        if self._shops_instead(event.member, 50):
            return self._earn(s, event)
        available = self.available.get(event.member, 0)
        spec = self._pick_burn_partner(available)
        step = spec.min_burn
        if self.rng.random() < 0.04:
            points = max(available, 0) + self.rng.randint(1, 400)  # more than the member has
        else:
            share = self.rng.uniform(0.3, 1.0)
            points = max(step, int(available * share) // step * step)
        posted = self.ops.burn(
            self.partners[spec.slug].id,
            member_id=event.member,
            reference=self._ref("redeem" if spec.slug != "charity" else "donation"),
            points=points,
            session=s,
        )
        self._burned(spec.slug, posted.transaction.id, posted.transaction.points)
        self._note(event.member, posted.member.available)
        return True

    def _burn_amount(self, s: Session, event: _Event) -> bool:
        """Pay part of a basket with points; the partner's cap bounds the share."""
        assert event.member is not None
        if self._shops_instead(event.member, 100):
            return self._earn(s, event)
        available = self.available.get(event.member, 0)
        spec = self._pick_burn_partner(available, exclude=("airline", "charity"))
        if spec.basket is None:
            return self._burn_points(s, event)
        basket = self._amount(spec)
        cap = Decimal(spec.max_burn_share or "1")
        wanted = cap * Decimal(self.rng.uniform(0.3, 1.0))
        if self.rng.random() < 0.06:
            wanted = min(cap * Decimal("1.5"), Decimal(1))  # a till that ignores the cap
        worth = Decimal(max(available, 0)) * Decimal(spec.burn_value_per_point)
        amount = min(basket * wanted, worth).quantize(quantum(spec.currency), rounding=ROUND_FLOOR)
        if amount <= 0:
            amount = quantum(spec.currency) * 100  # a member with nothing to pay with
        posted = self.ops.burn(
            self.partners[spec.slug].id,
            member_id=event.member,
            reference=self._ref("pay"),
            amount=str(amount),
            currency=spec.currency,
            basket_amount=str(basket),
            session=s,
        )
        self._burned(spec.slug, posted.transaction.id, posted.transaction.points)
        self._note(event.member, posted.member.available)
        return True

    def _burned(self, slug: str, txn_id: str, points: int) -> None:
        self.recent_burns[slug].append((txn_id, points))

    def _hold(self, s: Session, event: _Event) -> bool:
        """Points held at an online checkout (a seat upgrade, a book order)."""
        assert event.member is not None
        if self._shops_instead(event.member, 100):
            return self._earn(s, event)
        available = self.available.get(event.member, 0)
        spec = self.specs[self.rng.choice(("airline", "books"))]
        if available < spec.min_burn:
            spec = self.specs["books"]
        points = max(spec.min_burn, int(available * self.rng.uniform(0.3, 0.9)))
        result = self.ops.hold(
            self.partners[spec.slug].id,
            member_id=event.member,
            reference=self._ref("order"),
            points=points,
            expires_in=HOLD_EXPIRY_S,
            session=s,
        )
        self._note(event.member, result.member.available)
        # The first holds show every outcome once, whatever the demo's size; then by weight.
        outcome = (
            next(self.first_hold_outcomes, None)
            or self.rng.choices(
                [o for o, _ in HOLD_OUTCOMES], weights=[w for _, w in HOLD_OUTCOMES]
            )[0]
        )
        if outcome != "expire":
            later = event.at + timedelta(seconds=self.rng.uniform(60, HOLD_EXPIRY_S * 0.8))
            self._push(
                later,
                "void" if outcome == "void" else "capture",
                event.member,
                hold_id=result.hold.id,
                slug=spec.slug,
                points=(
                    max(1, int(result.hold.points * self.rng.uniform(0.5, 0.95)))
                    if outcome == "capture_part"
                    else None
                ),
            )
        return True

    def _capture(self, s: Session, event: _Event) -> bool:
        slug, hold_id, points = event.args["slug"], event.args["hold_id"], event.args["points"]
        assert isinstance(slug, str) and isinstance(hold_id, str)
        assert points is None or isinstance(points, int)
        posted = self.ops.capture(self.partners[slug].id, hold_id, points=points, session=s)
        self._burned(slug, posted.transaction.id, posted.transaction.points)
        self._note(posted.member.member_id, posted.member.available)
        return True

    def _void(self, s: Session, event: _Event) -> bool:
        slug, hold_id = event.args["slug"], event.args["hold_id"]
        assert isinstance(slug, str) and isinstance(hold_id, str)
        result = self.ops.void(self.partners[slug].id, hold_id, session=s)
        self._note(result.member.member_id, result.member.available)
        return True

    def _reverse(self, s: Session, slug: str, recent: deque[tuple[str, int]]) -> bool:
        """A refund: reverse a recent transaction of the partner, in full or in part."""
        if not recent:
            return False
        txn_id, points = recent.popleft() if self.rng.random() < 0.5 else recent.pop()
        part = None
        if points > 1 and self.rng.random() < 0.5:
            part = self.rng.randint(1, points - 1)
        posted = self.ops.reverse(
            self.partners[slug].id, txn_id, reference=self._ref("refund"), points=part, session=s
        )
        self._note(posted.member.member_id, posted.member.available)
        return True

    def _reverse_earn(self, s: Session, event: _Event) -> bool:
        # Refunds come in proportion to a partner's sales.
        slug = self.rng.choices([p.slug for p in PARTNERS], [p.earn_weight for p in PARTNERS])[0]
        return self._reverse(s, slug, self.recent_earns[slug])

    def _reverse_burn(self, s: Session, event: _Event) -> bool:
        slug = self.rng.choices([p.slug for p in PARTNERS], [p.burn_weight for p in PARTNERS])[0]
        return self._reverse(s, slug, self.recent_burns[slug])

    def _partner_bonus(self, s: Session, event: _Event) -> bool:
        """A promotion a partner pays for (billed at its issue price)."""
        assert event.member is not None
        slug, points, reason = self.rng.choice(_PARTNER_BONUSES)
        posted = self.ops.bonus(
            member_id=event.member,
            points=points,
            reason=reason,
            funded_by=self.partners[slug].id,
            session=s,
        )
        self._note(event.member, posted.member.available)
        return True

    def _coalition_bonus(self, s: Session, event: _Event) -> bool:
        """The operator's own bonuses: sign-up, referral, newsletter."""
        assert event.member is not None
        reason = event.args.get("reason") or self.rng.choice(("referral", "newsletter"))
        points = {"sign-up": 50, "referral": 100, "newsletter": 25}[str(reason)]
        posted = self.ops.bonus(
            member_id=event.member,
            points=points,
            reason=f"{reason} bonus",
            funded_by="coalition",
            session=s,
        )
        self._note(event.member, posted.member.available)
        return True

    def _adjust(self, s: Session, event: _Event) -> bool:
        """An operator's correction: goodwill points, or a duplicate receipt taken back."""
        if not self.members:
            return False
        member = self.rng.choice(self.members)
        available = self.available.get(member.id, 0)
        if self.rng.random() < 0.5 or available < 20:
            points, reason = 250, "goodwill: delayed refund, see ticket"
        else:
            points, reason = -min(available, 120), "correction: receipt counted twice"
        posted = self.ops.adjust(member_id=member.id, points=points, reason=reason, session=s)
        self._note(member.id, posted.member.available)
        return True

    def _clawback(self, s: Session, event: _Event) -> bool:
        """A big purchase, its points spent at once, then the purchase returned: a clawback."""
        step = event.args["step"]
        if step == 1:
            if not self.members:
                return False
            member = self.rng.choice(self.members)
            posted = self.ops.earn(
                self.partners["grocer"].id,
                member_id=member.id,
                reference=self._ref("rcpt"),
                amount="480.00",
                currency="EUR",
                session=s,
            )
            self._note(member.id, posted.member.available)
            self._push(
                event.at + timedelta(minutes=30),
                "clawback",
                member.id,
                step=2,
                earn=posted.transaction.id,
            )
        elif step == 2:
            assert event.member is not None
            spend = self.available.get(event.member, 0) // 100 * 100
            if spend > 0:
                posted = self.ops.burn(
                    self.partners["airline"].id,
                    member_id=event.member,
                    reference=self._ref("redeem"),
                    points=spend,
                    session=s,
                )
                self._note(event.member, posted.member.available)
            # The purchase comes back an hour later: its points are spent already.
            earn = event.args["earn"]
            self._push(event.at + timedelta(hours=1), "clawback", event.member, step=3, earn=earn)
        else:
            earn = event.args["earn"]
            assert isinstance(earn, str)
            posted = self.ops.reverse(
                self.partners["grocer"].id, earn, reference=self._ref("return"), session=s
            )
            self._note(event.member or "", posted.member.available)
        return True


#: How likely a member shops at each partner that takes purchases.
_AFFINITY = {"grocer": 0.9, "airline": 0.3, "fuel": 0.6, "books": 0.45}
#: Partner-funded promotions: (partner, points, reason).
_PARTNER_BONUSES = (
    ("airline", 500, "welcome aboard: first flight with the coalition card"),
    ("fuel", 100, "car-wash week"),
    ("grocer", 200, "weekly coupon redeemed"),
    ("books", 150, "book club sign-up"),
)


# --- the summary --------------------------------------------------------------------------


def _header(settings: Settings, sim: _Simulation, members: int, seed: int) -> str:
    return (
        f"Demo coalition: {len(PARTNERS)} partners, {members} members, {PERIOD_DAYS} days "
        f"({sim.start:%Y-%m-%d} to {sim.end:%Y-%m-%d %H:%M} UTC), seed {seed}.\n"
        f"Points are valid {DEMO_VALIDITY_DAYS} days in this demo (the program's configured "
        f"validity is {settings.points_validity_days} days), so the period shows breakage."
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Plain-text columns: the first left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  " + "  ".join(parts).rstrip())
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


def _cell(value: object) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@dataclass(slots=True)
class _PartnerPoints:
    issued: int = 0
    redeemed: int = 0
    earn_reversed: int = 0
    burn_reversed: int = 0


def _partner_points(s: Session) -> dict[str, _PartnerPoints]:
    """Points by partner and kind (the money is the statements')."""
    totals: dict[str, _PartnerPoints] = {}
    rows = s.execute(
        select(Transaction.partner_id, Transaction.kind, func.sum(Transaction.points))
        .where(Transaction.partner_id.is_not(None))
        .group_by(Transaction.partner_id, Transaction.kind)
    ).all()
    for partner_id, kind, points in rows:
        assert partner_id is not None
        t = totals.setdefault(partner_id, _PartnerPoints())
        flow = KINDS[kind]
        if flow.issued:
            t.issued += int(points)
        elif flow.redeemed:
            t.redeemed += int(points)
        elif flow.flow is Flow.EARN_REVERSED:
            t.earn_reversed += int(points)
        elif flow.flow is Flow.BURN_REVERSED:
            t.burn_reversed += int(points)
    return totals


def _summary(s: Session, sim: _Simulation, end: datetime) -> list[str]:
    partners = {p.id: p for p in s.scalars(select(Partner).order_by(Partner.created_at))}
    slug = {sim.partners[spec.slug].id: spec.slug for spec in PARTNERS}
    totals = _partner_points(s)
    lines = ["", "Per partner: points"]
    point_rows = []
    for pid, partner in partners.items():
        t = totals.get(pid, _PartnerPoints())
        point_rows.append(
            [f"{slug[pid]} ({partner.name})", partner.currency, t.issued, t.redeemed,
             t.earn_reversed, t.burn_reversed]
        )  # fmt: skip
    lines += _table(
        ["partner", "currency", "issued", "redeemed", "earn reversed", "burn reversed"],
        point_rows,
    )
    lines += _coalition_lines(s, sim, end)
    return lines


def _coalition_lines(s: Session, sim: _Simulation, end: datetime) -> list[str]:
    flows = reports.flows(s, None, end)
    liability = liability_at(s, end)
    issued = flows.issued_points
    members = s.scalar(select(func.count()).select_from(Member)) or 0
    active = reports.active_members(s, end - timedelta(days=30), end)
    negative = s.scalar(select(func.count()).select_from(Member).where(Member.balance < 0)) or 0
    tiers = dict(
        s.execute(
            select(Transaction.tier, func.count())
            .where(Transaction.kind == "earn")
            .group_by(Transaction.tier)
        ).all()
    )
    breakage = reports.share(flows.expired_points, issued)
    return [
        "",
        "Coalition",
        *_table(
            ["points", "total"],
            [
                ["issued by earns", flows.earned_points],
                ["issued as bonuses (partner- and coalition-funded)", flows.bonus_points],
                ["redeemed (burns and captures)", flows.redeemed_points],
                [f"expired (breakage: {breakage} of issued)", flows.expired_points],
                ["earn reversals (taken back)", flows.earn_reversed_points],
                ["burn reversals (given back)", flows.burn_reversed_points],
                ["operator adjustments (net)", flows.adjusted_points],
                [f"outstanding liability at {end:%Y-%m-%d %H:%M}", liability],
            ],
        ),
        f"  members: {members}, active in the last 30 days: {active}, "
        f"owing points after a clawback: {negative}",
        "  earns by tier: "
        + ", ".join(f"{tier} {tiers[tier]:,}" for tier in sorted(tiers, key=str)),
        f"  holds left to expire and released by the job: {sim.expired_holds}",
    ]


#: Where the demo writes the statement exports (relative to the working directory).
EXPORT_DIR = Path("statements")


def _settlement(
    settings: Settings, sessions: sessionmaker[Session], sim: _Simulation, end: datetime
) -> tuple[list[str], bool]:
    """Close the demo's period at ``end``; the statements, the roll-forward, the cross-brand
    matrix, the exports written and verified. (lines, every statement verified)."""
    closed = close(
        sessions,
        secret_key=settings.secret_key,
        cycle=settings.settlement_cycle,
        tz=settings.tz,
        now=max(utcnow(), end),
        cut_off=end,
    )
    slug = {sim.partners[spec.slug].id: spec.slug for spec in PARTNERS}
    period = closed.period
    lines = [
        "",
        f"Settlement: period {period.id}, posted from {period.start_at:%Y-%m-%d %H:%M} to "
        f"{period.end_at:%Y-%m-%d %H:%M} UTC, closed; one signed statement per partner, "
        "in its currency",
    ]
    EXPORT_DIR.mkdir(exist_ok=True)
    verified = True
    rows = []
    first: Path | None = None
    with transaction(sessions) as s:
        keys = {k.kid: k.public_key for k in public_keys(s)}
        (EXPORT_DIR / "signing-keys.json").write_text(
            json.dumps(
                [{"kid": k, "alg": "ed25519", "public_key": b64url(v)} for k, v in keys.items()]
            )
        )
        for statement in statements_of(s, period.id):
            document = document_of(statement)
            t = document["totals"]
            name = f"{slug[statement.partner_id]}-{statement.id}"
            for suffix, content in (("json", json_export(document)), ("csv", csv_export(document))):
                path = EXPORT_DIR / f"{name}.{suffix}"
                path.write_bytes(content)
                first = first or path
                verified = (
                    verified and verify_document(read_export(path.read_bytes()).document, keys).ok
                )
            rows.append(
                [slug[statement.partner_id], statement.currency, statement.line_count,
                 t["issued_amount"], t["earn_reversed_amount"], t["reimbursed_amount"],
                 t["burn_reversed_amount"], t["net_amount"], t["direction"]]
            )  # fmt: skip
        summary = reports.summary(s, period.id)
    lines += _table(
        ["partner", "cur", "lines", "issued", "earn reversed", "reimbursed", "burn reversed",
         "net (+ operator pays)", "direction"],
        rows,
    )  # fmt: skip
    lines += ["", "  operator's money, per currency (billed - reimbursed - adjustments = margin)"]
    lines += _table(
        ["currency", "billed", "reimbursed", "adjustments", "margin"],
        [[m.currency, *(m.document()[k] for k in ("billed", "reimbursed", "adjustments",
                                                   "margin"))] for m in summary.money],
    )  # fmt: skip
    f = summary.flows
    lines += [
        "",
        "  points roll-forward: opening + issued + bonuses - redeemed - expired"
        " - earn reversed + burn reversed + adjusted = closing",
        f"  {summary.opening_points:,} + {f.earned_points:,} + {f.bonus_points:,}"
        f" - {f.redeemed_points:,} - {f.expired_points:,} - {f.earn_reversed_points:,}"
        f" + {f.burn_reversed_points:,} + {f.adjusted_points:,} = {summary.closing_points:,}"
        f" ({'balances' if summary.balances else 'DOES NOT BALANCE'});"
        f" breakage {reports.share(f.expired_points, f.issued_points)},"
        f" active members {summary.active_members}",
    ]
    lines += _cross_brand_lines(summary.cross_brand, slug)
    lines += [
        "",
        f"Exports: {EXPORT_DIR.resolve()}/ (JSON and CSV per statement, signing-keys.json);",
        "  every statement verified" if verified else "  A STATEMENT DID NOT VERIFY",
        f"  check one yourself: coalition statements verify {first.resolve()}"
        f" --keys {(EXPORT_DIR / 'signing-keys.json').resolve()}"
        if first is not None
        else "",
    ]
    return lines, verified and summary.balances


#: Where the demo writes the payment files and the bank's statements.
PAYMENTS_DIR = Path("payments")
#: The operator's account when none is configured (valid IBAN and BIC, a test creditor id).
DEMO_OPERATOR = ("Coalition Demo Operator", "DE89370400440532013000", "COBADEFFXXX",
                 "DE98ZZZ09999999999")  # fmt: skip
#: Each demo partner's bank details (valid IBANs); the grocer has a SEPA direct debit mandate.
DEMO_BANK = {
    "grocer": ("Fresh & Co. Grocers SAS", "FR1420041010050500013M02606", "MANDATE-GROCER-1"),
    "airline": ("Sakura Air Europe Ltd", "GB29NWBK60161331926819", None),
    "fuel": ("Route 9 Fuel Inc", "GB82WEST12345698765432", None),
    "books": ("Marlowe Books Ltd", "GB33BUKB20201555555555", None),
    "charity": ("Kind Hearts Foundation", "BE68539007547034", None),
}


def _payments(
    settings: Settings, sessions: sessionmaker[Session], sim: _Simulation
) -> tuple[list[str], bool]:
    """Pay and reconcile the period: bank details under four eyes, every statement
    acknowledged, a payment run (its files to ``payments/``), the bank's camt.053 per currency
    (every payment, and the partners' own transfers for what the run skipped) written with
    ``write_camt053``, imported: every statement ends settled. (lines, all settled)."""
    finance = (Actor("demo-finance-anna", "finance"), Actor("demo-finance-ben", "finance"))
    if not settings.operator_iban:
        name, iban, bic, creditor_id = DEMO_OPERATOR
        settings = dataclasses.replace(
            settings,
            operator_name=name,
            operator_iban=iban,
            operator_bic=bic,
            sepa_creditor_id=creditor_id,
        )
    now = utcnow()
    today = now.date()
    with transaction(sessions) as s:
        for spec in PARTNERS:
            holder, iban, mandate = DEMO_BANK[spec.slug]
            details = bank_accounts.check_details(
                holder=holder,
                iban=iban,
                bic=None,
                mandate_id=mandate,
                mandate_signed_on=today - timedelta(days=90) if mandate else None,
                today=today,
            )
            partner_id = sim.partners[spec.slug].id
            bank_accounts.propose(s, partner_id, finance[0], details, now=now)
            bank_accounts.approve(s, partner_id, finance[1], now=now)
        period = reports.list_periods(s, before_id=None, limit=1)[0][0]
        statements = list(statements_of(s, period.id))
        for statement in statements:
            workflow.acknowledge(
                s,
                statement.id,
                Actor(None, "partner", statement.partner_id),
                secret_key=settings.secret_key,
                now=now,
            )
        run = runs.create_run(
            s, finance[0], statement_ids=None, execution_date=today, settings=settings, now=now
        )
        for statement in statements:
            if statement.net_minor == 0:  # nothing moves: finance records it
                workflow.settle(
                    s,
                    statement.id,
                    finance[1],
                    payment_reference="nothing to pay",
                    paid_at=now,
                    secret_key=settings.secret_key,
                    now=now,
                )
    PAYMENTS_DIR.mkdir(exist_ok=True)
    for made in run.files:
        (PAYMENTS_DIR / made.name).write_bytes(made.content)
    paid = {item.statement_id for item in run.items if item.direction != "skipped"}
    entries: dict[str, list[BankEntry]] = {}
    for number, statement in enumerate(statements, start=1):
        if statement.net_minor == 0:
            continue
        own = statement.id not in paid
        entries.setdefault(statement.currency, []).append(
            BankEntry(
                line=0,
                account_iban=settings.operator_iban,
                amount_minor=abs(statement.net_minor),
                currency=statement.currency,
                credit=statement.net_minor < 0,
                booking_date=today,
                # the partner's own transfer quotes the statement in its remittance only
                end_to_end_id=None if own else statement.id,
                bank_reference=f"DEMO{today:%Y%m%d}{number:05d}",
                remittance=f"Coalition statement {statement.id}" if own else "",
                reversal=False,
                return_reason=None,
            )
        )
    imported = []
    for currency, batch in sorted(entries.items()):
        camt = write_camt053(
            statement_id=f"DEMO-{today:%Y%m%d}-{currency}",
            account_iban=settings.operator_iban or "",
            entries=batch,
            created_at=now.replace(tzinfo=None, microsecond=0),
        )
        path = PAYMENTS_DIR / f"bank-statement-{today:%Y-%m-%d}-{currency}.camt053.xml"
        path.write_bytes(camt)
        with transaction(sessions) as s:
            done = reconcile.import_statement(
                s, camt, finance[0], secret_key=settings.secret_key, now=utcnow()
            )
            imported.append((path.name, reconcile.imported_data(done)))
    with transaction(sessions) as s:
        settled = [workflow.get_statement(s, st.id, partner_id=None) for st in statements]
        all_settled = all(st.status == "settled" for st in settled)
    data = runs.run_data(run)
    lines = [
        "",
        f"Payments: bank details approved under four eyes; payment run {run.run.id} "
        f"({len(data['payments'])} payments, {len(data['skipped'])} paid by the partner's own "
        "transfer)",
        *(
            f"  {f['name']}: {f['format']}, {f['transactions']} payment(s), "
            f"{f['control_sum']} {f['currency']}"
            for f in data["files"]
        ),
        "  the bank's statements, imported as `coalition bank import` does:",
        *(
            f"  {name}: {len(result['matched'])} of {result['entries']} entries settled "
            "their statement"
            for name, result in imported
        ),
        f"Files: {PAYMENTS_DIR.resolve()}/",
        "  every statement settled by its payment"
        if all_settled
        else "  A STATEMENT IS NOT SETTLED",
    ]
    return lines, all_settled


def _cross_brand_lines(matrix: reports.CrossBrand, slug: dict[str, str]) -> list[str]:
    """Which partner issued the points redeemed where, net of burn reversals."""
    burners = list(slug.values())
    named = {(slug[o] if o else "coalition", slug[b]): p for (o, b), p in matrix.cells.items()}
    origins = [*(b for b in burners if any(k[0] == b for k in named)), "coalition"]
    table_rows = [
        [origin, *(named.get((origin, b), 0) for b in burners),
         sum(named.get((origin, b), 0) for b in burners)]
        for origin in origins
    ]  # fmt: skip
    total = matrix.redeemed_points
    from_operator = sum(p for (o, _), p in matrix.cells.items() if o is None)
    return [
        "",
        f"Cross-brand: {reports.share(matrix.cross_points, total)} of redeemed points were issued"
        f" by another partner ({reports.share(from_operator, total)} came from coalition bonuses"
        " and adjustments)",
        "  points issued by (rows) and redeemed at (columns), net of burn reversals:",
        *_table(["issued by", *burners, "total"], table_rows),
    ]


def _operations_table(sim: _Simulation) -> list[str]:
    kinds = sorted(set(sim.done) | {k for k, _ in sim.errors})
    rows = []
    for kind in kinds:
        refused = {code: n for (k, code), n in sim.errors.items() if k == kind}
        detail = ", ".join(f"{code} {n}" for code, n in sorted(refused.items()))
        rows.append([kind, sim.done[kind], sum(refused.values()), detail])
    rows.append(["points-expiry job (expiry transactions)", sim.expiry_runs, 0, ""])
    errors = sum(sim.errors.values())
    rows.append(["total", sim.operation_count() - errors, errors, ""])
    return _table(["operation", "done", "refused", "refused because"], rows)


def cmd_demo(args: argparse.Namespace) -> int:
    """A demo coalition on an empty database, with a period of traffic."""
    from cli.example import demo_lines  # noqa: PLC0415 (it imports this module)

    rt = runtime()
    with progress("simulating the period", PERIOD_DAYS) as update:
        return run_demo(
            rt.settings,
            rt.engine,
            rt.sessions,
            seed=args.seed,
            members=args.members,
            describe_api=demo_lines,
            progress=lambda day, days: update(day, f"of {days} days"),
        )
