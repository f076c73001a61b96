"""``coalition worker``: the scheduled jobs, declared once (:func:`jobs`).

Every job claims its work in the database (``FOR UPDATE SKIP LOCKED``, unique keys), so any
number of workers may run them at once. A purge deletes what has passed its retention through
one helper, :func:`bounded_purge`: batch by batch, each in its own short transaction, at most
:data:`PURGE_BATCHES_PER_RUN` batches a run (the next run takes the rest), so a backlog never
becomes one long transaction.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from cli.runtime import Runtime, freeze_heap, ready_runtime
from coalition import idempotency
from coalition.db import transaction, utcnow
from coalition.scheduler import Job, run_blocking
from partners import ratelimit, replay, signatures, signin
from partners.operations import Operations
from partners.webhooks import outbox
from partners.webhooks.delivery import Dispatcher
from settlement.close import close_due

#: Batches one run of a purge job deletes at most.
PURGE_BATCHES_PER_RUN = 100

#: ``purge(session, now)``: delete (up to a batch of) what is due; how many rows.
PurgeStep = Callable[[Session, datetime], int]


@dataclass(frozen=True, slots=True)
class Purge:
    """A purge job: its step, and the batch the step deletes at most (``None``: the step
    deletes everything due in one statement, so one transaction a run)."""

    name: str
    step: PurgeStep
    batch: int | None
    every_s: int


def bounded_purge(rt: Runtime, purge: Purge, batches: int = PURGE_BATCHES_PER_RUN) -> int:
    """Run ``purge.step`` in one transaction after another until a batch comes back short (or
    ``batches`` ran); how many rows it deleted."""
    total = 0
    for _ in range(batches if purge.batch is not None else 1):
        with transaction(rt.sessions) as session:
            deleted = purge.step(session, utcnow())
        total += deleted
        if purge.batch is None or deleted < purge.batch:
            break
    return total


def _rate_counters(rt: Runtime) -> PurgeStep:
    window_s = rt.settings.rate_limit_window_s
    return lambda session, now: ratelimit.purge_counters(session, now, window_s)


def purges(rt: Runtime) -> list[Purge]:
    """What the service forgets once its retention has passed."""
    return [
        # idempotency records past their 24 h retention
        Purge("idempotency-purge", idempotency.purge, idempotency.PURGE_BATCH, every_s=600),
        # signature nonces whose window has passed
        Purge("nonce-purge", signatures.purge_nonces, signatures.NONCE_PURGE_BATCH, every_s=60),
        # used-up POST signatures that can no longer verify
        Purge("signature-use-purge", replay.purge_signature_uses, None, every_s=60),
        # rate-limit counters of windows that have ended
        Purge("rate-counter-purge", _rate_counters(rt), None, every_s=60),
        # webhook deliveries done before the retention, then their events
        Purge("webhook-purge", outbox.purge, outbox.PURGE_BATCH, every_s=600),
        # console links and sessions that ended more than a day ago
        Purge("sign-in-purge", signin.purge, None, every_s=600),
    ]


def jobs(rt: Runtime) -> list[Job]:
    """The periodic jobs every worker runs: the work, then the purges."""
    ops = Operations(rt.settings, rt.sessions)
    work = [
        Job("hold-expiry", ops.expire_holds, every_s=5),
        Job("points-expiry", ops.expire_points, every_s=60),
        Job("settlement-close", lambda: close_due(rt.sessions, rt.settings, utcnow()), every_s=60),
        Job("webhook-dispatch", lambda: Dispatcher(rt.settings, rt.sessions).run(), every_s=1),
    ]
    return work + [_job(rt, p) for p in purges(rt)]


def _job(rt: Runtime, purge: Purge) -> Job:
    return Job(purge.name, lambda: bounded_purge(rt, purge), purge.every_s)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run only the scheduled jobs, until SIGTERM or SIGINT (or, as the scheduler of
    ``coalition serve``, until that parent is gone)."""
    scheduled = jobs(ready_runtime())
    freeze_heap()
    run_blocking(scheduled, parent_pid=args.parent_pid)
    return 0
