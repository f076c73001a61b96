"""The scheduler's start-up: APScheduler (3.x) running the service's periodic jobs.

Every job claims its work in the database (``FOR UPDATE SKIP LOCKED``, unique keys), so any
number of processes may run the scheduler at once and a job run twice does nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

log = logging.getLogger("coalition.jobs")


@dataclass(frozen=True, slots=True)
class Job:
    """A periodic job: ``run`` returns how many things it did."""

    name: str
    run: Callable[[], int]
    every_s: int


def _logged(job: Job) -> Callable[[], None]:
    def run() -> None:
        try:
            done = job.run()
        except Exception:
            log.exception("job %s failed; it runs again in %s s", job.name, job.every_s)
            return
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


def run_blocking(jobs: list[Job]) -> None:
    """Run ``jobs`` in this process until interrupted (``coalition worker``)."""
    scheduler = BlockingScheduler(timezone="UTC")
    add_jobs(scheduler, jobs)
    log.info("worker started: %s", ", ".join(f"{j.name} every {j.every_s}s" for j in jobs))
    scheduler.start()
