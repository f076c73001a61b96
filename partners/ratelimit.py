"""Rate limits per API key and per source address, shared by every API process through the
database: fixed windows (a minute by default, ``COALITION_RATE_LIMIT_WINDOW_S``), one counter
row per bucket and window.

- **Per key**: every verified request counts against its key (``COALITION_RATE_LIMIT_PER_KEY``
  requests a window).
- **Per source address**: every request whose signature fails (unsigned ones included) counts
  against the address it came from (``COALITION_RATE_LIMIT_FAILURES_PER_ADDRESS`` a window);
  past it the address is refused before any verification is tried.

Past a limit the answer is ``429 rate-limited`` with ``Retry-After`` (the seconds left in the
window). Cost on the hot path: none. A verified request is counted in the process's memory; at
most every :data:`DEFAULT_FLUSH_S` a request of the process merges its counts into the shared
rows (one ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` per key seen, in a short
transaction of its own, so no request ever waits on a key's counter row) and learns the totals
of every process. A key is refused once the shared total plus what this process counted since is
over the limit: every process may let through what it sees in one flush interval before it knows
(a limit overshoots by at most the key's rate x the flush interval x processes). A failed
request costs a statement: failures are not the hot path. Each process also remembers, until the
window ends, the buckets it saw over their limit, so a client that keeps going after its 429
costs a dictionary look-up. A window can let up to twice the limit through around its boundary
(fixed windows); see docs/security.md.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import datetime
from typing import Any, cast

from sqlalchemy import BigInteger, Integer, String, Table, bindparam, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from coalition.db import Base, dialect_of, transaction
from coalition.errors import RateLimited
from coalition.hot import HotStatement

DEFAULT_WINDOW_S = 60
#: How often a process merges its per-key counts into the shared counter rows, at most
#: (``COALITION_RATE_LIMIT_FLUSH_MS``; 0: at every request).
DEFAULT_FLUSH_S = 0.2
BUCKET_MAX = 80
#: Buckets a process remembers as over their limit (more are forgotten: the database decides).
BLOCKED_MAX = 10_000


class RateCounter(Base):
    """Requests (or failures) of one bucket (``key:<id>``, ``addr:<ip>``) in one window."""

    __tablename__ = "rate_counters"

    bucket: Mapped[str] = mapped_column(String(BUCKET_MAX), primary_key=True)
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hits: Mapped[int] = mapped_column(Integer)


def _window(now: datetime, window_s: int) -> int:
    return int(now.timestamp()) // window_s * window_s


def _hit_statement(insert: Any) -> HotStatement:
    table = cast("Table", RateCounter.__table__)
    stmt = insert(table).values(
        bucket=bindparam("bucket"), window_start=bindparam("start"), hits=bindparam("hits")
    )
    return HotStatement(
        stmt.on_conflict_do_update(
            index_elements=[table.c.bucket, table.c.window_start],
            set_={"hits": table.c.hits + stmt.excluded.hits},
        ).returning(table.c.hits)
    )


# Pre-built per dialect (building the ORM-enabled statement per call cost more than running it).
_HIT = {"postgresql": _hit_statement(postgresql.insert), "sqlite": _hit_statement(sqlite.insert)}


def hit(
    session: Session,
    bucket: str,
    now: datetime,
    window_s: int = DEFAULT_WINDOW_S,
    *,
    hits: int = 1,
    start: int | None = None,
) -> int:
    """Count ``hits`` of ``bucket`` in the window of ``now`` (or the one from ``start``); the
    hits of every process so far, these included."""
    start = _window(now, window_s) if start is None else start
    params = {"bucket": bucket[:BUCKET_MAX], "start": start, "hits": hits}
    (counted,) = _HIT[dialect_of(session)].rows(session, params)[0]
    return int(counted)


def purge_counters(session: Session, now: datetime, window_s: int = DEFAULT_WINDOW_S) -> int:
    """Delete the counters of windows that have ended; how many (a scheduled job)."""
    result = session.execute(
        delete(RateCounter)
        .where(RateCounter.window_start < _window(now, window_s))
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0))


class Limiter:
    """One per process: the limits, and the buckets this process saw over them."""

    def __init__(
        self,
        *,
        per_key: int,
        failures_per_address: int,
        window_s: int = DEFAULT_WINDOW_S,
        flush_s: float = DEFAULT_FLUSH_S,
    ) -> None:
        self.per_key = per_key
        self.failures_per_address = failures_per_address
        self.window_s = window_s
        self.flush_s = flush_s
        self._blocked: dict[str, int] = {}
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._totals: dict[str, int] = {}
        self._pending_window: int | None = None
        self._flushed_at = time.monotonic()

    def _refuse(self, bucket: str, now: datetime, what: str) -> RateLimited:
        until = _window(now, self.window_s) + self.window_s
        with self._lock:
            if len(self._blocked) >= BLOCKED_MAX:
                self._blocked.clear()
            self._blocked[bucket] = until
        retry = max(1, math.ceil(until - now.timestamp()))
        return RateLimited(f"too many {what}; retry in {retry} s", retry_after_s=retry)

    def _check_blocked(self, bucket: str, now: datetime, what: str) -> None:
        until = self._blocked.get(bucket)
        if until is None:
            return
        if now.timestamp() >= until:
            with self._lock:
                self._blocked.pop(bucket, None)
            return
        raise self._refuse(bucket, now, what)

    def before_verification(self, address: str | None, now: datetime) -> None:
        """Refuse an address already over its failure limit (memory only, no statement)."""
        if address is not None and self.failures_per_address:
            self._check_blocked(f"addr:{address}", now, "failed requests from this address")

    def count(self, key_id: str, now: datetime) -> None:
        """Count a verified request against its key, in this process's memory (merged into
        the shared counters by :meth:`flush`)."""
        if not self.per_key:
            return
        bucket = f"key:{key_id}"
        window = _window(now, self.window_s)
        with self._lock:
            if self._pending_window != window:  # a new window: start from nothing
                self._pending_window = window
                self._pending.clear()
                self._totals.clear()
            self._pending[bucket] = self._pending.get(bucket, 0) + 1

    def check(self, key_id: str, now: datetime) -> None:
        """RateLimited when the key is over its limit: the shared total as of the last
        :meth:`flush`, plus what this process counted since."""
        if not self.per_key:
            return
        bucket = f"key:{key_id}"
        self._check_blocked(bucket, now, "requests with this key")
        with self._lock:
            total = self._totals.get(bucket, 0) + self._pending.get(bucket, 0)
        if total > self.per_key:
            raise self._refuse(bucket, now, "requests with this key")

    def flush_due(self) -> bool:
        """True when this process's counts should be merged into the shared rows now: once per
        :attr:`flush_s` (the caller that hears it makes the :meth:`flush`; the requests that
        arrive while that flush waits for its thread do not start one each)."""
        if not self._pending or time.monotonic() - self._flushed_at < self.flush_s:
            return False
        with self._lock:
            if time.monotonic() - self._flushed_at < self.flush_s:
                return False
            self._flushed_at = time.monotonic()
            return True

    def flush(self, sessions: sessionmaker[Session], now: datetime) -> None:
        """Merge this process's per-key counts into the shared counters (a transaction of its
        own, one statement per key) and learn every process's totals."""
        with self._lock:
            window, pending = self._pending_window, dict(self._pending)
            self._pending.clear()
        if window is None or not pending:
            return
        totals = {}
        with transaction(sessions) as session:
            for bucket, hits in sorted(pending.items()):  # sorted: no deadlock between processes
                totals[bucket] = hit(session, bucket, now, self.window_s, hits=hits, start=window)
        with self._lock:
            if self._pending_window == window:
                self._totals.update(totals)

    def count_failure(self, session: Session, address: str | None, now: datetime) -> bool:
        """Count a failed request against its address; True once it is over the limit."""
        if address is None or not self.failures_per_address:
            return False
        bucket = f"addr:{address}"
        if hit(session, bucket, now, self.window_s) > self.failures_per_address:
            self._refuse(bucket, now, "failed requests from this address")
            return True
        return False

    def refusal(self, address: str, now: datetime) -> RateLimited:
        """The 429 for an address over its failure limit."""
        return self._refuse(f"addr:{address}", now, "failed requests from this address")
