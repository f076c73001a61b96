"""The simulated period: events on a clock, run in batched transactions, with the expiry jobs
at the end of each day. What each event does is in :mod:`cli.simulation.traffic`."""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cli.simulation import traffic
from cli.simulation.traffic import SimMember
from cli.simulation.world import (
    COMMIT_EVERY,
    EARN_UPLOAD_HOURS,
    GROCER_PROMOTION,
    HOLD_OUTCOMES,
    OPS_PER_MEMBER_DAY,
    PARTNERS,
    PERIOD_DAYS,
    RATE_CHANGE_DAY,
    RECENT,
    SPECS,
    TRAFFIC,
    PartnerSpec,
)
from coalition.config import Settings
from coalition.db import transaction
from coalition.errors import CoalitionError
from coalition.models import Member
from partners.models import Partner, RateCard
from partners.operations import EarnItem, Operations
from partners.rates import create_partner, create_rate_card

#: ``progress(days_done, days)``: called after each simulated day (a progress bar's hook).
DayProgress = Callable[[int, int], None]


@dataclass
class SimClock:
    """The time the operations see; the simulation moves it forward only."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def to(self, at: datetime) -> None:
        """Move to ``at`` (never back)."""
        self.now = max(self.now, at)


@dataclass(order=True, slots=True)
class Event:
    """Something that happens at ``at`` (``seq`` keeps the order of events at one time)."""

    at: datetime
    seq: int
    kind: str = field(compare=False)
    member: str | None = field(compare=False, default=None)
    args: dict[str, object] = field(compare=False, default_factory=dict)


class Simulation:
    """The simulated period: what it knows of the coalition, and the events still to run."""

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
        self.members: list[SimMember] = []
        self.member_index: dict[str, SimMember] = {}
        self.available: dict[str, int] = {}
        self.recent_earns: dict[str, deque[tuple[str, int]]] = {}
        self.recent_burns: dict[str, deque[tuple[str, int]]] = {}
        self.queue: list[Event] = []
        self.seq = itertools.count()
        self.refs = itertools.count(1)
        self.done: Counter[str] = Counter()
        self.errors: Counter[tuple[str, str]] = Counter()
        self.expired_holds = 0
        self.first_hold_outcomes = iter([o for o, _ in HOLD_OUTCOMES])
        self.expiry_runs = 0
        # Receipts waiting for their partner's next upload: (partner slug, event, item).
        self.receipts: list[tuple[str, Event, EarnItem]] = []
        self.bulk_earns = 0
        self.bulk_batches = 0

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

    def _dispatch(self, s: Session, event: Event) -> None:
        try:
            performed = traffic.HANDLERS[event.kind](self, s, event)
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

    def slugs(self) -> dict[str, str]:
        """Each demo partner's slug by its partner id."""
        return {self.partners[spec.slug].id: spec.slug for spec in PARTNERS}

    def operation_count(self) -> int:
        """Operations attempted through :class:`Operations` (done or refused), and expiries."""
        return sum(self.done.values()) + sum(self.errors.values()) + self.expiry_runs

    # --- scheduling -----------------------------------------------------------------------

    def push(self, at: datetime, kind: str, member: str | None = None, **args: object) -> None:
        """Schedule an event of ``kind`` at ``at``."""
        heapq.heappush(self.queue, Event(at, next(self.seq), kind, member, dict(args)))

    def _shop_time(self, day_start: datetime) -> datetime:
        """A moment in opening hours (07:00 to 22:00)."""
        return day_start + timedelta(hours=7, seconds=self.rng.random() * 15 * 3600)

    def _schedule_joins(self) -> None:
        """Most members are there from the first day; the rest join during the first month."""
        for _ in range(self.member_target):
            day = 0 if self.rng.random() < 0.7 else self.rng.randrange(1, 30)
            self.push(self._shop_time(self.start + timedelta(days=day)), "join")

    def _schedule_operator_work(self) -> None:
        """A few adjustments by the operator and one clawback story."""
        for day in (5, 12, 19, 26, 33, 41, 48, 55):
            self.push(self._shop_time(self.start + timedelta(days=day)), "adjust")
        for day in (20, 40):
            self.push(self._shop_time(self.start + timedelta(days=day)), "clawback", step=1)

    def _schedule_day(self, day_start: datetime) -> None:
        joined = self.members
        if not joined:
            return
        count = round(OPS_PER_MEMBER_DAY * len(joined))
        who = self.rng.choices(joined, weights=[m.activity for m in joined], k=count)
        kinds = self.rng.choices([k for k, _ in TRAFFIC], weights=[w for _, w in TRAFFIC], k=count)
        for member, kind in zip(who, kinds, strict=True):
            self.push(self._shop_time(day_start), kind, member.id)
        for hour in EARN_UPLOAD_HOURS:
            self.push(day_start + timedelta(hours=hour), "upload")

    def _announce_promotion(self, day_start: datetime) -> None:
        """The operator versions the grocer's rate card ahead of the promotion."""
        self.clock.to(day_start + timedelta(hours=6))
        with transaction(self.sessions) as s:
            self._rate_card(
                s,
                self.partners["grocer"].id,
                SPECS["grocer"],
                GROCER_PROMOTION,
                effective_from=self.start + timedelta(days=RATE_CHANGE_DAY),
            )
