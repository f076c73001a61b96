"""The worker's jobs: declared once (the names operators read in docs/operations.md), and every
purge bounded the same way: batch by batch, each its own transaction, until a batch comes back
short or the run's bound is reached (the next run takes the rest)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session

from cli.jobs import PURGE_BATCHES_PER_RUN, Purge, bounded_purge, jobs, purges
from cli.runtime import Runtime
from tests.conftest import Db

OPERATIONS_MD = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _runtime(db: Db) -> Runtime:
    return Runtime(db.settings, db.engine, db.sessions)


class _Step:
    """A purge step that deletes the counts it is given, one call each, and notes the session
    of each call."""

    def __init__(self, *counts: int) -> None:
        self.counts = list(counts)
        self.sessions: list[Session] = []

    def __call__(self, session: Session, now: datetime) -> int:
        self.sessions.append(session)
        return self.counts.pop(0) if self.counts else 0


def test_a_purge_runs_batch_after_batch_until_one_comes_back_short(lite: Db) -> None:
    step = _Step(10, 10, 3, 10)
    assert bounded_purge(_runtime(lite), Purge("p", step, 10, every_s=60)) == 23
    assert len(step.sessions) == 3  # the short batch ends the run
    assert len({id(s) for s in step.sessions}) == 3  # each batch its own transaction


def test_a_purge_stops_at_its_bound_and_leaves_the_rest_to_the_next_run(lite: Db) -> None:
    step = _Step(*[10] * 50)
    assert bounded_purge(_runtime(lite), Purge("p", step, 10, every_s=60), batches=4) == 40
    assert len(step.sessions) == 4
    assert PURGE_BATCHES_PER_RUN == 100


def test_a_purge_in_one_statement_runs_once(lite: Db) -> None:
    step = _Step(5000, 7)
    assert bounded_purge(_runtime(lite), Purge("p", step, None, every_s=60)) == 5000
    assert len(step.sessions) == 1


def test_the_real_purges_run_on_an_empty_database(lite: Db) -> None:
    rt = _runtime(lite)
    assert [bounded_purge(rt, p) for p in purges(rt)] == [0] * len(purges(rt))


def test_every_job_has_one_name_and_operations_md_lists_each(lite: Db) -> None:
    names = [job.name for job in jobs(_runtime(lite))]
    assert len(names) == len(set(names))
    assert names[0] == "hold-expiry"
    documented = re.findall(r"^\| ([a-z-]+) \| \d+ s \|", OPERATIONS_MD.read_text(), re.M)
    assert sorted(documented) == sorted(names)
