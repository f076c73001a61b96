"""Cut-offs of the settlement cycle (``COALITION_SETTLEMENT_CYCLE`` in ``COALITION_TIMEZONE``).

A cut-off is local midnight: every day (``daily``), every Monday (``weekly``) or on the first
of every month (``monthly``), in the configured time zone, so a daylight-saving change moves
its UTC time and never its local one.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from coalition.errors import invariant

CYCLES = ("daily", "weekly", "monthly")


def _midnight(day: datetime, tz: ZoneInfo) -> datetime:
    return datetime.combine(day.date(), time(0), tzinfo=tz)


def latest_cutoff(at: datetime, cycle: str, tz: ZoneInfo) -> datetime:
    """The latest scheduled cut-off at or before ``at`` (UTC)."""
    invariant(cycle in CYCLES, f"no settlement cycle {cycle!r}")
    local = at.astimezone(tz)
    day = _midnight(local, tz)
    if cycle == "weekly":
        day = _midnight(day - timedelta(days=day.weekday()), tz)
    elif cycle == "monthly":
        day = day.replace(day=1)
    return day.astimezone(UTC)


def previous_cutoff(before: datetime, cycle: str, tz: ZoneInfo) -> datetime:
    """The latest scheduled cut-off strictly before ``before`` (UTC)."""
    return latest_cutoff(before - timedelta(microseconds=1), cycle, tz)


def next_cutoff(after: datetime, cycle: str, tz: ZoneInfo) -> datetime:
    """The first scheduled cut-off strictly after ``after`` (UTC)."""
    local = latest_cutoff(after, cycle, tz).astimezone(tz)
    if cycle == "daily":
        nxt = _midnight(local + timedelta(days=1, hours=12), tz)
    elif cycle == "weekly":
        nxt = _midnight(local + timedelta(days=7, hours=12), tz)
    else:
        year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
        nxt = local.replace(year=year, month=month, day=1)
    return nxt.astimezone(UTC)
