"""``coalition demo``: a demo coalition on an empty database, with a period of traffic.

Five partners in four currencies (one without minor units), a few hundred members and a
simulated period of earns, burns, holds, reversals, bonuses, adjustments and expiry (tens of
thousands of operations), all driven through :class:`~partners.operations.Operations` on a
simulated clock (the simulation: cli/simulation/). The traffic takes the batched path: hundreds
of operations per database transaction, each under its own savepoint, so an operation the rules
refuse (a typed :class:`~coalition.errors.CoalitionError`) rolls back alone and is counted.
Earns, most of the traffic, wait for their partner's next upload and go to the ledger as one
bulk earn per partner (``Operations.earn_many``), refused items counted one by one. The program
validity is shortened to 30 days so that the period shows breakage. The period is then closed,
paid and reconciled (bank details under four eyes, a payment run's files and the bank's camt.053
in ``payments/``, imported: every statement ends settled). The run ends with a summary and
every ledger invariant checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from cli.example import demo_lines
from cli.runtime import freeze_heap, runtime
from cli.simulation import report, settle
from cli.simulation.keys import DescribeApi, api_example, create_keys
from cli.simulation.period import DayProgress, Simulation
from cli.simulation.world import DEMO_VALIDITY_DAYS, PERIOD_DAYS
from coalition.config import Settings
from coalition.db import migrate, transaction, utcnow
from coalition.progress import progress
from partners.models import Partner
from settlement.check import run_checks

Echo = Callable[[str], None]


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


def cmd_demo(args: argparse.Namespace) -> int:
    """A demo coalition on an empty database, with a period of traffic."""
    rt = runtime()
    freeze_heap()
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
    if not _empty(engine, sessions, echo):
        return None
    demo_settings = dataclasses.replace(settings, points_validity_days=DEMO_VALIDITY_DAYS)
    end = utcnow().replace(minute=0, second=0, microsecond=0)
    sim = Simulation(demo_settings, sessions, random.Random(seed), end, members)  # noqa: S311 (a demo)
    sim.found_coalition()
    keys = create_keys(settings, sessions)
    traffic_started, traffic_cpu = time.perf_counter(), time.process_time()
    sim.run(progress)
    traffic_s = time.perf_counter() - traffic_started
    traffic_cpu_s = time.process_time() - traffic_cpu
    settled_ok = _report_period(settings, engine, sessions, sim, seed=seed, echo=echo)
    operations, errors = sim.operation_count(), sum(sim.errors.values())
    echo("")
    echo(
        "Operations (through Operations, batched: one savepoint each; "
        f"{sim.bulk_earns:,} of the earns in {sim.bulk_batches:,} bulk earns, "
        "a partner's receipts since its last upload each)"
    )
    for line in report.operations_table(sim):
        echo(line)
    if sim.members:
        keys = dataclasses.replace(keys, member_id=sim.members[0].id)
    for line in (describe_api or api_example)(settings, keys):
        echo(line)
    ok = _check(sessions, echo) and settled_ok
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


def _empty(engine: Engine, sessions: sessionmaker[Session], echo: Echo) -> bool:
    """Whether the database has no partner yet (else say why the demo will not run)."""
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
    return not existing


def _report_period(
    settings: Settings,
    engine: Engine,
    sessions: sessionmaker[Session],
    sim: Simulation,
    *,
    seed: int,
    echo: Echo,
) -> bool:
    """Print the period's summary, close it, pay and reconcile it; whether every statement
    verified, balanced and ended settled."""
    echo(report.header(settings, sim, seed))
    echo(f"Database: {engine.url.render_as_string(hide_password=True)}")
    with transaction(sessions) as s:
        for line in report.summary(s, sim, sim.end):
            echo(line)
    settlement_lines, settled_ok = settle.settlement(settings, sessions, sim, sim.end)
    for line in settlement_lines:
        echo(line)
    payment_lines, paid_ok = settle.payments(settings, sessions, sim)
    for line in payment_lines:
        echo(line)
    return settled_ok and paid_ok


def _check(sessions: sessionmaker[Session], echo: Echo) -> bool:
    """Print every invariant's check (as ``coalition check`` does); whether all hold."""
    with transaction(sessions) as s:
        findings = run_checks(s)
    echo("")
    echo("Invariants (coalition check)")
    for finding in findings:
        echo(f"  [{'ok' if finding.ok else 'VIOLATED'}] {finding.invariant}. {finding.name}")
        for violation in finding.violations:
            echo(f"        {violation}")
    return all(f.ok for f in findings)
