"""Where a read goes: the primary, or a streaming replica while its lag allows
(``Reads``, decision 20 of docs/architecture.md); the replica's lag measured from a thread of
its own (``Replica``)."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import (
    Engine,
    text,
)
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from coalition.db import CONNECT_TIMEOUT_S, session_factory, transaction
from coalition.errors import NotFound

T = TypeVar("T")
log = logging.getLogger("coalition.db")

#: How often each process measures its replica's lag: one statement on the replica (never on
#: the primary), from a thread of its own, so no request waits for it.
REPLICA_CHECK_S = 1.0

# The replica's lag as it sees it: 0 while it has replayed all it received and still streams;
# otherwise the age of the last transaction it replayed (growing while its replay is paused, or
# it has lost its primary). Not a standby any more (promoted): 0. ``status`` of
# pg_stat_wal_receiver is NULL to a role without pg_read_all_stats: taken as streaming.
_REPLICA_LAG = text(
    """
    SELECT CASE
             WHEN NOT pg_is_in_recovery() THEN 0
             WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn()
                  AND EXISTS (SELECT FROM pg_stat_wal_receiver
                              WHERE coalesce(status, 'streaming') = 'streaming') THEN 0
             ELSE coalesce(extract(epoch FROM clock_timestamp()
                                   - pg_last_xact_replay_timestamp())::float8, 'Infinity')
           END,
           CASE WHEN pg_is_in_recovery()
                THEN coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(),
                                              pg_last_wal_replay_lsn()), 0)::bigint
                ELSE 0
           END
    """
)


@dataclass(frozen=True, slots=True)
class ReplicaLag:
    """One measurement of the replica, as it sees itself."""

    #: False when the replica could not be reached (``error`` says how).
    reachable: bool
    #: Seconds of the primary's commits the replica has not replayed yet (0: caught up).
    lag_s: float = math.nan
    #: WAL received but not replayed yet, in bytes.
    lag_bytes: int = 0
    error: str | None = None

    def within(self, bound_s: float) -> bool:
        """The replica answers and lags by at most ``bound_s``."""
        return self.reachable and self.lag_s <= bound_s


class Replica:
    """A streaming replica (``COALITION_REPLICA_DATABASE_URL``) for the reads that may be a
    moment old. A thread measures its lag every :data:`REPLICA_CHECK_S`; it is *usable* while
    it answers and lags by at most ``max_lag_s``. Each change is logged once: a warning when
    reads fall back to the primary, an info line when they come back."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_lag_s: float,
        check_every_s: float = REPLICA_CHECK_S,
        observe: Callable[[ReplicaLag, bool], None] | None = None,
    ) -> None:
        self.engine = engine
        self.sessions = session_factory(engine)
        self.max_lag_s = max_lag_s
        self.check_every_s = check_every_s
        self.observe = observe
        self.last: ReplicaLag | None = None
        self._usable: bool | None = None  # None: not measured yet (reads go to the primary)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def usable(self) -> bool:
        """Reads may go to the replica now (the last measurement, or a failure since)."""
        return bool(self._usable)

    def measure(self) -> ReplicaLag:
        """Ask the replica for its lag (one statement)."""
        try:
            with self.engine.connect() as conn:
                lag_s, lag_bytes = conn.execute(_REPLICA_LAG).one()
        except Exception as exc:  # an unreachable replica is a state, not a failure
            return ReplicaLag(False, error=failure_line(exc))
        return ReplicaLag(True, float(lag_s), int(lag_bytes))

    def check(self) -> ReplicaLag:
        """Measure the lag and decide where reads go."""
        lag = self.measure()
        self._decide(lag)
        return lag

    def lost(self, exc: BaseException) -> None:
        """A read on the replica failed to reach it: reads go to the primary until the next
        measurement finds it back."""
        self._decide(ReplicaLag(False, error=failure_line(exc)))

    def _decide(self, lag: ReplicaLag) -> None:
        usable = lag.within(self.max_lag_s)
        with self._lock:
            was, self._usable, self.last = self._usable, usable, lag
        if self.observe is not None:
            self.observe(lag, usable)
        if was is usable:
            return
        if not usable:
            why = (
                f"lag {lag.lag_s:.1f} s is past COALITION_REPLICA_MAX_LAG_S={self.max_lag_s:g}"
                if lag.reachable
                else f"unreachable ({lag.error})"
            )
            log.warning("replica: %s; reads go to the primary until it catches up", why)
        else:
            again = "" if was is None else " again"
            log.info("replica: reads go to the replica%s (lag %.1f s)", again, lag.lag_s)

    def start(self) -> None:
        """Measure now and then every :data:`REPLICA_CHECK_S`, in a daemon thread."""
        if self._thread is not None:
            return

        def run() -> None:
            while True:
                self.check()
                if self._stop.wait(self.check_every_s):
                    return

        self._thread = threading.Thread(target=run, name="coalition-replica-lag", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop measuring and close the replica's connections."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=CONNECT_TIMEOUT_S + 1)
        self.engine.dispose()


def failure_line(exc: BaseException) -> str:
    """A database failure in one short line: the driver's exception and its first line."""
    cause = getattr(exc, "orig", None) or exc
    first = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {first[0]}" if first else type(cause).__name__


class Reads:
    """Where the reads go that may be a moment old (reports, listings, exports, the console's
    pages): the replica while it is usable, else the primary. The one place that decides;
    every write, and every read that must see its own writes, uses the primary's sessions
    directly.

    A read on the replica that cannot reach it, or fails on it (a query cancelled by a
    conflict with recovery), or finds nothing (:class:`~coalition.errors.NotFound`: a row not
    replayed yet), or finds the replica's pool busy, runs again on the primary: a replica never
    makes a read fail. ``work`` may therefore run twice: it only reads.
    """

    def __init__(self, primary: sessionmaker[Session], replica: Replica | None = None) -> None:
        self.primary = primary
        self.replica = replica

    @property
    def on_replica(self) -> bool:
        """Reads go to the replica now."""
        return self.replica is not None and self.replica.usable

    def run(self, work: Callable[[Session], T], *, fresh: bool = False) -> T:
        """``work(session)`` in one read transaction; on the primary when ``fresh`` (the
        reader must see its own recent writes) or when the replica is not usable."""
        replica = self.replica
        if replica is not None and not fresh and replica.usable:
            with replica.sessions() as session:
                try:
                    with session.begin():
                        return work(session)
                except NotFound:
                    pass  # perhaps not replayed yet: the primary says for sure
                except PoolTimeout:
                    pass  # the replica's connections are all busy: the primary serves this one
                except (OperationalError, InterfaceError) as exc:
                    if exc.connection_invalidated or getattr(exc.orig, "sqlstate", None) is None:
                        replica.lost(exc)  # out of reach: logged once, by the state change
                    else:  # a statement the replica refused (a conflict with recovery)
                        log.info(
                            "replica: a read failed (%s); read on the primary", failure_line(exc)
                        )
        with transaction(self.primary) as session:
            return work(session)

    def close(self) -> None:
        """Stop the replica's measurements and close its connections."""
        if self.replica is not None:
            self.replica.close()
