"""Opaque, time-ordered ids with a type prefix (``txn_01J...``).

48 bits of milliseconds then 80 random bits, Crockford base32: ids sort by creation time, which
keeps the primary-key index append-mostly at 100 million rows. Within one process they are
strictly increasing (the ULID spec's monotonic rule): an id minted in the same millisecond as the
one before, or after the wall clock stepped back, is the one before plus one, so "newest first"
by id holds even for earns a millisecond apart.
"""

from __future__ import annotations

import re
import secrets
import threading
import time

from coalition.errors import invariant

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DIGIT_PAIRS = [high + low for high in _ALPHABET for low in _ALPHABET]
_PAIR_SHIFTS = tuple(range(120, -1, -10))
PREFIXES = frozenset(
    {
        "mem",
        "txn",
        "hold",
        "stmt",
        "prt",
        "key",
        "we",
        "evt",
        "rc",
        "per",
        "dsp",
        "aud",
        "csn",
        "bac",
        "pay",
        "bst",
        "bke",
    }
)

#: A member id, the one kind of id a caller may choose: ``mem_`` and 1 to 64 of
#: [A-Za-z0-9_-]. The one limit for request bodies, paths, queries and the database column.
MEMBER_ID_BODY = "mem_[A-Za-z0-9_-]{1,64}"
MEMBER_ID_MAX_LENGTH = 68
MEMBER_ID_RULE = "mem_ followed by 1 to 64 of [A-Za-z0-9_-]"
_MEMBER_ID = re.compile(MEMBER_ID_BODY)


def is_member_id(text: str) -> bool:
    """True when ``text`` is a whole member id (a full match: no trailing newline)."""
    return _MEMBER_ID.fullmatch(text) is not None


_last = 0
_lock = threading.Lock()


def new_id(prefix: str) -> str:
    """Return a new id such as ``txn_01JD3...`` (prefix, underscore, 26 characters), greater
    than every id this process minted before."""
    global _last  # noqa: PLW0603 (the process's one monotonic counter)
    invariant(prefix in PREFIXES, f"no id prefix {prefix!r}")
    fresh = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    with _lock:
        value = _last = fresh if fresh > _last else _last + 1
    # The 26 digits of the value's 130 bits, most significant first, two at a time: a bulk
    # import makes an id a row, and this is a quarter of the cost of one digit at a time.
    return f"{prefix}_{''.join([_DIGIT_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])}"
