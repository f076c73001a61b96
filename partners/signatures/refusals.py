"""Why a signed request is refused: the reasons a ``401 signature-invalid`` names, one place.

Every check of the package raises through :func:`fail`, so a refusal always carries one of
:data:`REASONS` in ``extra["reason"]`` and a detail that never holds a secret, a signature
value or an unprintable id.
"""

from __future__ import annotations

import re
from typing import Any

from coalition.errors import SignatureInvalid, invariant

REASONS = frozenset(
    {
        "missing-signature",
        "malformed-signature",
        "unknown-key",
        "revoked-key",
        "expired-key",
        "alg-mismatch",
        "missing-component",
        "digest-missing",
        "digest-mismatch",
        "stale",
        "future",
        "expired-signature",
        "replayed-nonce",
        "bad-signature",
    }
)
_PRINTABLE_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


def fail(reason: str, detail: str, **extra: Any) -> SignatureInvalid:
    """The error for one failed check; ``detail`` never holds a secret or a signature value."""
    invariant(reason in REASONS, f"unknown signature refusal reason {reason!r}")
    return SignatureInvalid(detail, reason=reason, **extra)


def printable(text: str) -> str:
    """An id as a client sent it, when it is short and plain enough to be shown back."""
    return text if _PRINTABLE_ID.fullmatch(text) else "(not shown)"
