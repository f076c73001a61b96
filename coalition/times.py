"""Times a client sends: the one function every face (API bodies and queries, console forms,
file imports) passes them through.

Python's ``datetime`` spans the years 1 to 9999 and overflows past them (``OverflowError``):
``0001-01-01T00:00:00+01:00`` is a valid RFC 3339 time whose UTC is before year 1. The
service computes with what it is given (expiry dates, settlement cut-offs, windows of days), so
a client's time is bounded to :data:`EARLIEST` .. :data:`LATEST`, where every such sum stays
far inside the calendar, and turned to UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from coalition.errors import ValidationFailed

#: The earliest time a client may send (the Unix epoch).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
#: The latest time a client may send (exclusive): millennia before the calendar ends, so any
#: window or validity the service adds stays computable.
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
#: The longest duration a client may ask for (``expires_in`` and the like), in seconds: ten
#: years (anything longer is a mistake, and ``now`` + it stays before :data:`LATEST`).
MAX_DURATION_S = 10 * 366 * 24 * 3600
RULE = "a time from 1970-01-01T00:00:00Z to before 9000-01-01T00:00:00Z"


def client_time(value: datetime, field: str) -> datetime:
    """``value`` in UTC, or :class:`ValidationFailed` at ``field`` when it has no time zone or
    lies outside :data:`EARLIEST` .. :data:`LATEST` (checked before any arithmetic, so a time
    at the calendar's edge with an offset never overflows)."""
    offset = value.utcoffset()
    if offset is None:
        raise ValidationFailed.at(field, "a time needs a time zone, e.g. 2026-01-05T09:00:00Z")
    if not EARLIEST.year <= value.year < LATEST.year:
        raise ValidationFailed.at(field, RULE)
    utc = value.astimezone(UTC)
    if not EARLIEST <= utc < LATEST:
        raise ValidationFailed.at(field, RULE)
    return utc


def client_duration(seconds: int, field: str) -> timedelta:
    """``seconds`` as a duration, or :class:`ValidationFailed` at ``field`` outside 1 ..
    :data:`MAX_DURATION_S`."""
    if not 1 <= seconds <= MAX_DURATION_S:
        raise ValidationFailed.at(field, f"from 1 to {MAX_DURATION_S} seconds (ten years)")
    return timedelta(seconds=seconds)
