"""Opaque, time-ordered ids with a type prefix (``txn_01J...``).

48 bits of milliseconds then 80 random bits, Crockford base32: ids sort by creation time, which
keeps the primary-key index append-mostly at 100 million rows.
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
PREFIXES = frozenset({"mem", "txn", "hold", "stmt", "prt", "key", "we", "evt", "rc", "per", "dsp"})


def new_id(prefix: str) -> str:
    """Return a new id such as ``txn_01JD3...`` (prefix, underscore, 26 characters)."""
    assert prefix in PREFIXES, prefix
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"
