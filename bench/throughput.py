"""Single-operation throughput of earn and burn, and the statements each one runs.

Every measured operation goes through :class:`~partners.operations.Operations` exactly as the
API calls it: its own database transaction, on a pooled connection, with the service's clock.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, event, text

from coalition.config import Settings
from coalition.db import make_engine, migrate, session_factory, transaction
from coalition.ledger import Posted
from partners.operations import EarnItem, Operations
from partners.rates import create_partner, create_rate_card

#: Points each member starts with: enough that no burn of the benchmark runs short.
SEED_SPEND = "100000.00"
EARN_AMOUNT = "12.34"
BURN_POINTS = 10
#: Items per ``earn_many`` batch in the bulk benchmark.
BULK_BATCH = 500


@dataclass
class Bench:
    """A migrated database with one partner and members who hold points."""

    engine: Engine
    ops: Operations
    partner_id: str
    members: list[str]
    _refs: Iterator[int] = field(default_factory=lambda: iter(range(1, 1 << 62)))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reference(self, prefix: str) -> str:
        """A reference no operation of the run has used."""
        with self._lock:
            return f"{prefix}-{next(self._refs)}"

    def earn(self, member_id: str, session: Any = None) -> None:
        """One earn of :data:`EARN_AMOUNT` EUR."""
        self.ops.earn(
            self.partner_id,
            member_id=member_id,
            reference=self.reference("earn"),
            amount=EARN_AMOUNT,
            currency="EUR",
            session=session,
        )

    def burn(self, member_id: str, session: Any = None) -> None:
        """One burn of :data:`BURN_POINTS` points."""
        self.ops.burn(
            self.partner_id,
            member_id=member_id,
            reference=self.reference("burn"),
            points=BURN_POINTS,
            session=session,
        )


def prepare(url: str, *, members: int) -> Bench:
    """Migrate ``url``'s (empty) database; a partner (EUR) and ``members`` members with points."""
    engine = make_engine(url, pool_size=8, max_overflow=8)
    migrate(engine)
    sessions = session_factory(engine)
    ops = Operations(Settings(database_url=url, secret_key=b"b" * 32), sessions)
    now = datetime.now(UTC)
    with transaction(sessions) as s:
        partner = create_partner(s, name="Bench Grocer", currency="EUR", now=now)
        create_rate_card(
            s,
            partner.id,
            earn_points_per_unit=Decimal("1"),
            issue_price_per_point=Decimal("0.01"),
            burn_value_per_point=Decimal("0.01"),
            reimburse_price_per_point=Decimal("0.008"),
            max_burn_share=None,
            effective_from=now,
            now=now,
        )
    bench = Bench(engine, ops, partner.id, [])
    with ops.batch() as s:
        for _ in range(members):
            member_id, _ = ops.create_member(session=s)
            ops.earn(
                partner.id,
                member_id=member_id,
                reference=bench.reference("seed"),
                amount=SEED_SPEND,
                currency="EUR",
                session=s,
            )
            bench.members.append(member_id)
    # Statistics, as autovacuum gathers them within a minute of such growth: without them the
    # planner takes the fresh tables for empty, and a plan it caches then can scan a partner's
    # every transaction to find one reference (an earn's cost grew with the run).
    with engine.begin() as connection:
        connection.execute(text("ANALYZE"))
    return bench


def drain(bench: Bench, past_due: str, job: Callable[[datetime], int]) -> tuple[int, float, float]:
    """A scheduled job over a backlog: ``past_due`` (SQL) moves the backlog past its date,
    statistics are gathered as autovacuum would, and ``job(now)`` runs until it does nothing
    more. What it did in all, the seconds and this process's CPU seconds."""
    with bench.engine.begin() as conn:
        conn.execute(text(past_due))
        conn.execute(text("ANALYZE"))
    now = datetime.now(UTC)
    start_s, cpu_s, total = time.perf_counter(), time.process_time(), 0
    while done := job(now):
        total += done
    return total, round(time.perf_counter() - start_s, 2), round(time.process_time() - cpu_s, 2)


@dataclass(frozen=True, slots=True)
class Throughput:
    """Operations per second (wall clock), and this process's CPU time per operation."""

    per_s: float
    cpu_ms_per_op: float


def throughput(
    bench: Bench, operation: Callable[[str], None], *, threads: int, seconds: float
) -> Throughput:
    """Operations per second of ``operation`` on random members from ``threads`` threads.

    Each thread runs operations back to back until the deadline; only operations finished by
    then count. Any exception fails the benchmark. The CPU time is the whole process's (all
    threads, the driver included; the database server's is not in it), which a busy machine
    disturbs far less than the wall clock.
    """
    start = threading.Barrier(threads + 1)
    counts = [0] * threads
    failures: list[BaseException] = []
    deadline = [0.0]

    def worker(n: int) -> None:
        rng = random.Random(n)
        start.wait()
        try:
            while True:
                operation(rng.choice(bench.members))
                if time.perf_counter() > deadline[0]:
                    return
                counts[n] += 1
        except BaseException as exc:
            failures.append(exc)

    pool = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
    for thread in pool:
        thread.start()
    cpu = time.process_time()
    deadline[0] = time.perf_counter() + seconds
    start.wait()
    for thread in pool:
        thread.join()
    cpu = time.process_time() - cpu
    if failures:
        raise failures[0]
    done = sum(counts)
    return Throughput(done / seconds, 1000 * cpu / max(done, 1))


@dataclass(frozen=True, slots=True)
class StatementCount:
    """Statements the driver ran per operation (cursor executions), and one operation's list."""

    per_operation: float
    commits_per_operation: float
    statements: list[str]


def count_statements(
    bench: Bench, operation: Callable[[str], None], *, operations: int
) -> StatementCount:
    """Run ``operations`` operations one after another and count what reached the driver.

    A ``before_cursor_execute`` event counts statements (an executemany counts once: one round
    trip); a ``commit`` event counts commits, which are a round trip too.
    """
    seen: list[str] = []
    commits = [0]

    def on_statement(*args: Any) -> None:
        seen.append(" ".join(str(args[2]).split())[:100])

    def on_commit(_conn: Any) -> None:
        commits[0] += 1

    event.listen(bench.engine, "before_cursor_execute", on_statement)
    event.listen(bench.engine, "commit", on_commit)
    try:
        operation(bench.members[0])  # the first one after the listeners is the sample
        sample = list(seen)
        seen.clear()
        commits[0] = 0
        for n in range(operations):
            operation(bench.members[1 + n % (len(bench.members) - 1)])
    finally:
        event.remove(bench.engine, "before_cursor_execute", on_statement)
        event.remove(bench.engine, "commit", on_commit)
    return StatementCount(len(seen) / operations, commits[0] / operations, sample)


def batched(bench: Bench, operation: Callable[[str, Any], None]) -> Callable[[str], None]:
    """``operation`` on the batched path: under a savepoint in a transaction of its own."""

    def run(member_id: str) -> None:
        with bench.ops.batch() as s:
            operation(member_id, s)

    return run


def bulk_items(bench: Bench, rng: random.Random, batch: int) -> list[EarnItem]:
    """``batch`` earns of :data:`EARN_AMOUNT` EUR on random members, fresh references."""
    return [
        EarnItem(rng.choice(bench.members), bench.reference("bulk"), EARN_AMOUNT, "EUR")
        for _ in range(batch)
    ]


def bulk_throughput(bench: Bench, *, seconds: float, batch: int = BULK_BATCH) -> Throughput:
    """Earns per second through ``Operations.earn_many`` (one thread, each batch its own
    transaction, ``batch`` items on random members), and CPU per earn.

    Batches run back to back until the deadline; the last one counts, and the wall time is
    measured to its end. Any refused item fails the benchmark.
    """
    rng = random.Random(0)
    done = 0
    cpu = time.process_time()
    started = time.perf_counter()
    while time.perf_counter() < started + seconds:
        results = bench.ops.earn_many(bench.partner_id, bulk_items(bench, rng, batch))
        refused = [r for r in results if not isinstance(r, Posted)]
        assert not refused, refused[:3]
        done += batch
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    return Throughput(done / elapsed, 1000 * cpu / done)


def count_bulk_statements(bench: Bench, *, batch: int = BULK_BATCH) -> StatementCount:
    """Statements (and commits) of one ``earn_many`` batch of ``batch`` items."""
    rng = random.Random(1)
    items = bulk_items(bench, rng, batch)
    seen: list[str] = []
    commits = [0]

    def on_statement(*args: Any) -> None:
        seen.append(" ".join(str(args[2]).split())[:100])

    def on_commit(_conn: Any) -> None:
        commits[0] += 1

    event.listen(bench.engine, "before_cursor_execute", on_statement)
    event.listen(bench.engine, "commit", on_commit)
    try:
        bench.ops.earn_many(bench.partner_id, items)
    finally:
        event.remove(bench.engine, "before_cursor_execute", on_statement)
        event.remove(bench.engine, "commit", on_commit)
    return StatementCount(len(seen), commits[0], seen)
