"""Several processes closing the same cut-off at once: one period, one statement per partner
(held by the schema's unique keys, not by luck)."""

from __future__ import annotations

import multiprocessing
from datetime import datetime, timedelta
from multiprocessing.synchronize import Barrier

import pytest
from sqlalchemy import func, select

from coalition.config import Settings
from coalition.db import make_engine, session_factory, transaction
from settlement.close import close
from settlement.models import Period, Statement, StatementLine
from tests.conftest import Db
from tests.settlement.helpers import ref

PROCESSES = 3
#: Cut-offs closed in turn, each by all the processes at once.
ROUNDS = 3


def _close_in_process(url: str, cut_off: datetime, now: datetime, gate: Barrier) -> str:
    engine = make_engine(url)
    settings = Settings(secret_key=b"k" * 32)
    gate.wait(timeout=60)
    closed = close(
        session_factory(engine),
        secret_key=settings.secret_key,
        cycle=settings.settlement_cycle,
        tz=settings.tz,
        now=now,
        cut_off=cut_off,
    )
    engine.dispose()
    return closed.period.id


def _run(
    url: str, cut_off: datetime, now: datetime, gate: Barrier, out: multiprocessing.Queue[str]
) -> None:
    out.put(_close_in_process(url, cut_off, now, gate))


@pytest.mark.postgres
def test_three_processes_closing_the_same_cut_off_make_one_period_and_one_statement_each(
    pg: Db,
) -> None:
    partners = [pg.partner(c) for c in ("EUR", "JPY", "BHD", "EUR")]
    member = pg.member()
    for partner in partners:
        for n in range(20):
            pg.ops.earn(
                partner.id,
                member_id=member,
                reference=ref(),
                amount=str(1000 + n),
                currency=partner.currency,
            )
    context = multiprocessing.get_context("spawn")
    for rounds in range(1, ROUNDS + 1):
        pg.clock.advance(hours=1)
        cut_off = pg.clock() - timedelta(minutes=1)
        gate = context.Barrier(PROCESSES)
        out: multiprocessing.Queue[str] = context.Queue()
        workers = [
            context.Process(target=_run, args=(pg.url, cut_off, pg.clock(), gate, out))
            for _ in range(PROCESSES)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
            assert worker.exitcode == 0
        period_ids = {out.get(timeout=10) for _ in workers}
        assert len(period_ids) == 1
        with transaction(pg.sessions) as s:
            assert s.scalar(select(func.count()).select_from(Period)) == rounds
            per_partner = s.execute(
                select(Statement.partner_id, func.count()).group_by(Statement.partner_id)
            ).all()
            assert sorted(n for _, n in per_partner) == [rounds] * len(partners)
            assert s.scalar(select(func.count()).select_from(StatementLine)) == 20 * len(partners)
    pg.assert_ledger_ok()
