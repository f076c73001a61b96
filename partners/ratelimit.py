"""Rate limits per API key and per source address, shared by every API process through the
database: fixed windows (a minute by default, ``COALITION_RATE_LIMIT_WINDOW_S``), one counter
row per bucket and window.

- **Per key**: every verified request counts against its key (``COALITION_RATE_LIMIT_PER_KEY``
  requests a window).
- **Per source address**: every request whose signature fails (unsigned ones included) counts
  against the address it came from (``COALITION_RATE_LIMIT_FAILURES_PER_ADDRESS`` a window);
  past it the address is refused before any verification is tried.

Past a limit the answer is ``429 rate-limited`` with ``Retry-After`` (the seconds left in the
window). Cost on the hot path: one ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` as the
last statement of the verification's own transaction (so the row lock is held for the commit
only), none for the address of a request that verifies. Each process also remembers, until
the window ends, the buckets it saw over their limit, so a client that keeps going after its
429 costs a dictionary look-up, not a database statement. A window can let up to twice the
limit through around its boundary (fixed windows); see docs/security.md.
"""

from __future__ import annotations

import math
import threading
from datetime import datetime

from sqlalchemy import BigInteger, Integer, String, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from coalition.db import Base
from coalition.errors import RateLimited

DEFAULT_WINDOW_S = 60
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


def hit(session: Session, bucket: str, now: datetime, window_s: int = DEFAULT_WINDOW_S) -> int:
    """Count one hit of ``bucket`` in the current window; the hits so far, this one included."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    start = _window(now, window_s)
    stmt = insert(RateCounter).values(bucket=bucket[:BUCKET_MAX], window_start=start, hits=1)
    counted = stmt.on_conflict_do_update(
        index_elements=[RateCounter.bucket, RateCounter.window_start],
        set_={"hits": RateCounter.hits + 1},
    ).returning(RateCounter.hits)
    return int(session.execute(counted).scalar_one())


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
        self, *, per_key: int, failures_per_address: int, window_s: int = DEFAULT_WINDOW_S
    ) -> None:
        self.per_key = per_key
        self.failures_per_address = failures_per_address
        self.window_s = window_s
        self._blocked: dict[str, int] = {}
        self._lock = threading.Lock()

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

    def count_request(self, session: Session, key_id: str, now: datetime) -> None:
        """Count a verified request against its key; RateLimited past the limit."""
        if not self.per_key:
            return
        bucket = f"key:{key_id}"
        self._check_blocked(bucket, now, "requests with this key")
        if hit(session, bucket, now, self.window_s) > self.per_key:
            raise self._refuse(bucket, now, "requests with this key")

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
