"""The rate-limit counters: one row per bucket and window, counted in one statement, purged
once their window has ended; a process remembers a bucket over its limit until then."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from coalition.db import transaction
from coalition.errors import RateLimited
from partners.ratelimit import Limiter, hit, purge_counters
from tests.conftest import Db


def test_hits_count_per_bucket_and_window(db: Db) -> None:
    now = db.clock()
    with transaction(db.sessions) as s:
        assert [hit(s, "key:a", now) for _ in range(3)] == [1, 2, 3]
        assert hit(s, "key:b", now) == 1
        assert hit(s, "key:a", now + timedelta(seconds=60)) == 1
    with transaction(db.sessions) as s:
        assert purge_counters(s, now + timedelta(seconds=60)) == 2
        assert purge_counters(s, now + timedelta(seconds=120)) == 1


def _request(limiter: Limiter, key_id: str, now: datetime) -> None:
    """What the guard does for a verified request in one process: count, then check."""
    limiter.count(key_id, now)
    limiter.check(key_id, now)


def test_a_key_over_its_limit_is_refused_until_the_window_ends(db: Db) -> None:
    limiter = Limiter(per_key=2, failures_per_address=0, window_s=60)
    start = db.clock().replace(second=0, microsecond=0)
    _request(limiter, "key_x", start)
    _request(limiter, "key_x", start + timedelta(seconds=1))
    with pytest.raises(RateLimited) as info:
        _request(limiter, "key_x", start + timedelta(seconds=20))
    assert info.value.extra["retry_after_s"] == 40
    with pytest.raises(RateLimited):  # remembered until the window ends
        _request(limiter, "key_x", start + timedelta(seconds=30))
    _request(limiter, "key_x", start + timedelta(seconds=60))


def test_every_process_counts_what_the_others_counted_once_it_flushed(db: Db) -> None:
    one, two = (Limiter(per_key=5, failures_per_address=0, window_s=60) for _ in range(2))
    start = db.clock().replace(second=0, microsecond=0)
    for n in range(3):
        _request(one, "key_x", start + timedelta(seconds=n))
    one.flush(db.sessions, start + timedelta(seconds=3))
    _request(two, "key_x", start + timedelta(seconds=4))
    two.flush(db.sessions, start + timedelta(seconds=4))  # learns the shared 4
    _request(two, "key_x", start + timedelta(seconds=5))  # 5: the limit
    with pytest.raises(RateLimited):
        _request(two, "key_x", start + timedelta(seconds=6))
    with transaction(db.sessions) as s:
        assert hit(s, "key:key_x", start, hits=0) == 4  # what was flushed, from both


def test_limits_of_zero_are_off(db: Db) -> None:
    limiter = Limiter(per_key=0, failures_per_address=0)
    for _ in range(5):
        _request(limiter, "key_x", db.clock())
        assert not limiter.count_failure(None, "10.0.0.1", db.clock())  # type: ignore[arg-type]
    limiter.before_verification("10.0.0.1", db.clock())


def test_a_flush_is_due_to_one_request_per_period(db: Db) -> None:
    """While one request's flush waits for its thread, the requests after it do not start one
    each (a stampede of flushes cost a signed earn a twentieth of its CPU)."""
    limiter = Limiter(per_key=100, failures_per_address=0, flush_s=0.0)
    assert not limiter.flush_due()  # nothing counted: nothing to merge
    limiter = Limiter(per_key=100, failures_per_address=0, flush_s=3600.0)
    limiter._flushed_at -= 3600.0
    _request(limiter, "key_x", db.clock())
    assert [limiter.flush_due() for _ in range(5)] == [True, False, False, False, False]
