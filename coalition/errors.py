"""The domain's typed errors: one class per problem ``type`` in the public contract.

They carry a stable ``code`` (the last segment of the problem type URI), a human ``detail`` and
optional extra members; the HTTP status is decided once, at the API edge.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

T = TypeVar("T")


class InvariantViolated(AssertionError):
    """A rule of the ledger that the code itself must keep was broken: a bug, never the
    client's doing (a ``500``). Raised by :func:`invariant`, which ``python -O`` keeps."""


def invariant(condition: bool, message: str) -> None:
    """Check a ledger invariant in running code: :class:`InvariantViolated` unless it holds.

    Not ``assert``, which ``python -O`` strips: these checks guard money and points.
    """
    if not condition:
        raise InvariantViolated(message)


def required(value: T | None, message: str) -> T:
    """``value``, checked not to be ``None`` (:class:`InvariantViolated` if it is): an
    :func:`invariant` that also tells the type checker so."""
    if value is None:
        raise InvariantViolated(message)
    return value


class CoalitionError(Exception):
    """Base of every error a user can cause; the operation changed nothing."""

    code: ClassVar[str] = "coalition-error"
    title: ClassVar[str] = "Request failed"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class ValidationFailed(CoalitionError):
    """Input that breaks a rule; ``errors`` lists ``{"path", "message"}`` items, where the
    domain names the field (``amount``, ``transaction_ids[2]``; empty: the input as a whole)
    and each face turns it into its own words: the API into ``$.amount``, a file import into
    the row's column."""

    code = "validation"
    title = "The request is not valid"

    def __init__(self, errors: list[dict[str, str]]) -> None:
        detail = "; ".join(
            f"{e['path']}: {e['message']}" if e["path"] else e["message"] for e in errors
        )
        super().__init__(detail, errors=errors)
        self.errors = errors

    @classmethod
    def at(cls, field: str, message: str) -> ValidationFailed:
        """One error at one field."""
        return cls([{"path": field, "message": message}])


class InsufficientPoints(CoalitionError):
    code = "insufficient-points"
    title = "Not enough points"


class BurnCapExceeded(CoalitionError):
    code = "burn-cap-exceeded"
    title = "Points may not pay this much of the basket"


class CurrencyMismatch(CoalitionError):
    code = "currency-mismatch"
    title = "Currency does not match the partner's currency"


class UnknownMember(CoalitionError):
    code = "unknown-member"
    title = "No such member"


class NotFound(CoalitionError):
    code = "not-found"
    title = "Not found"


class DuplicateReference(CoalitionError):
    code = "duplicate-reference"
    title = "This reference was already used"


class HoldNotActive(CoalitionError):
    code = "hold-not-active"
    title = "The hold is not active"


class ReversalExceedsOriginal(CoalitionError):
    code = "reversal-exceeds-original"
    title = "Reversal exceeds what is left of the original"


class PartnerNotActive(CoalitionError):
    code = "partner-not-active"
    title = "The partner is not active"


class Conflict(CoalitionError):
    code = "conflict"
    title = "The request conflicts with the current state"


class SignatureInvalid(CoalitionError):
    """A request whose HTTP Message Signature does not verify; ``extra["reason"]`` says which
    check failed (``unknown-key``, ``bad-signature``, ``stale``, ``digest-mismatch``...)."""

    code = "signature-invalid"
    title = "The request signature is not valid"


class Forbidden(CoalitionError):
    """A valid key without the scope or role the endpoint needs."""

    code = "forbidden"
    title = "This key may not do that"


class IdempotencyKeyMissing(CoalitionError):
    code = "idempotency-key-missing"
    title = "Idempotency-Key header required"


class IdempotencyKeyReused(CoalitionError):
    code = "idempotency-key-reused"
    title = "Idempotency-Key was used with a different request"


class IdempotencyKeyInUse(CoalitionError):
    code = "idempotency-key-in-use"
    title = "A request with this Idempotency-Key is still running"


class PayloadTooLarge(CoalitionError):
    code = "payload-too-large"
    title = "The request body is too large"


class RateLimited(CoalitionError):
    """Too many requests for a key or from an address; ``extra["retry_after_s"]`` says when."""

    code = "rate-limited"
    title = "Too many requests"


class Unavailable(CoalitionError):
    code = "unavailable"
    title = "The service is unavailable"


class StatementClosed(CoalitionError):
    code = "statement-closed"
    title = "The statement can no longer change"


class FourEyes(CoalitionError):
    """A change needs a second person: the key (or its console session) that proposed it may
    not approve it."""

    code = "four-eyes"
    title = "Another person must approve this"


class PaymentsNotConfigured(CoalitionError):
    """The operator's own bank account (``COALITION_OPERATOR_*``) is not configured."""

    code = "payments-not-configured"
    title = "The operator's bank account is not configured"
