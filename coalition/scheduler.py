"""The scheduler's start-up: APScheduler (3.x) running the service's periodic jobs.

Every job claims its work in the database (``FOR UPDATE SKIP LOCKED``, unique keys), so any
number of processes may run the scheduler at once and a job run twice does nothing twice.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from coalition.db import database_unreachable
from coalition.replicas import failure_line

log = logging.getLogger("coalition.jobs")


@dataclass(frozen=True, slots=True)
class Job:
    """A periodic job: ``run`` returns how many things it did."""

    name: str
    run: Callable[[], int]
    every_s: int


def _logged(job: Job) -> Callable[[], None]:
    """``job.run`` with its outcome logged. The database out of reach (a restart, a failover:
    expected, and the job's transaction rolled back whole) is one warning line when the job
    first meets it, then quiet until the job runs again, which says so in one info line;
    anything else is an error with its traceback at every run."""
    unreachable = False

    def run() -> None:
        nonlocal unreachable
        try:
            done = job.run()
        except Exception as exc:
            if not database_unreachable(exc):
                log.exception("job %s failed; it runs again in %s s", job.name, job.every_s)
            elif not unreachable:
                unreachable = True
                log.warning(
                    "job %s: the database is unreachable (%s); it retries every %s s",
                    job.name,
                    failure_line(exc),
                    job.every_s,
                )
            return
        if unreachable:
            unreachable = False
            log.info("job %s: the database is reachable again; the job runs", job.name)
        if done:
            log.info("job %s: %d done", job.name, done)

    return run


def add_jobs(scheduler: BaseScheduler, jobs: list[Job]) -> None:
    """Schedule ``jobs``; a run never overlaps itself within one process."""
    for job in jobs:
        scheduler.add_job(
            _logged(job),
            "interval",
            seconds=job.every_s,
            id=job.name,
            name=job.name,
            max_instances=1,
            coalesce=True,
        )


#: How often a scheduler child looks whether its parent (``coalition serve``) still runs.
PARENT_CHECK_S = 1


def run_blocking(jobs: list[Job], *, parent_pid: int | None = None) -> None:
    """Run ``jobs`` in this process until SIGTERM or SIGINT (``coalition worker``); with
    ``parent_pid``, also until that process is no longer this one's parent.

    Stopping starts no new job run; a run in progress finishes before the process exits.
    """
    scheduler = BlockingScheduler(timezone="UTC")
    add_jobs(scheduler, jobs)

    def stop(signum: int, _frame: object) -> None:
        log.info("worker stopping on %s", signal.Signals(signum).name)
        scheduler.shutdown(wait=False)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    if parent_pid is not None:

        def orphaned() -> None:
            if os.getppid() != parent_pid:
                log.warning("worker stopping: its parent process %d is gone", parent_pid)
                scheduler.shutdown(wait=False)

        scheduler.add_job(orphaned, "interval", seconds=PARENT_CHECK_S, id="parent-check")
    log.info("worker started: %s", ", ".join(f"{j.name} every {j.every_s}s" for j in jobs))
    scheduler.start()
    log.info("worker stopped")
