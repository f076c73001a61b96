"""msgspec Structs for the request bodies of the HTTP API and the responses it shapes itself
(the domain's own results, a transaction or a rate card, are defined where it builds them).

Requests are decoded strictly (no type coercion, no unknown fields, time zones required) by
:func:`api.decoding.decode`, which turns msgspec's errors into a ``validation`` problem naming
the field (``$.amount``). The constraints here are the shape of a request (types, lengths,
patterns, bounds); the rules (a currency's decimals, a rate card in force, enough points) stay
in the domain, which reports its own violations the same way.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal, TypeVar

from litestar.params import PathParameter, QueryParameter
from msgspec import Meta, Struct

from coalition import text
from coalition.ids import MEMBER_ID_BODY, MEMBER_ID_MAX_LENGTH, MEMBER_ID_RULE
from coalition.money import MAX_POINTS
from coalition.times import RULE as TIME_RULE
from coalition.times import client_time
from partners.operation_base import REASON_MAX
from partners.queries import TransactionOut
from partners.rates import NAME_MAX, RateCardOut

T = TypeVar("T")

# --- shapes ------------------------------------------------------------------------------


#: What each pattern means, in words: what a problem document says instead of the regex.
_RULES: dict[str, str] = {}
_MATCHING = re.compile(r"Expected `str` matching regex '(?P<pattern>.*)'")


def full_match(body: str, rule: str) -> str:
    """A pattern both msgspec (``re.search``) and JSON Schema (ECMA 262) read as a full match;
    ``rule`` says it in words for problem documents.

    In Python ``$`` also matches before a final newline (``"mem_x\n"``), so the lookahead
    refuses one; ECMA's ``$`` is the end of the text already, where the lookahead holds.
    """
    pattern = rf"^(?:{body})$(?!\n)"
    _RULES[pattern] = rule
    return pattern


def explain(message: str) -> str:
    """A decoder's message with a pattern it names replaced by the pattern's rule."""
    found = _MATCHING.fullmatch(message)
    if found is None:
        return message
    pattern = found["pattern"].encode().decode("unicode_escape")
    rule = _RULES.get(pattern) or _RULES.get(found["pattern"])
    return f"Expected {rule}" if rule else message


#: Text on one line, as every text field of the service (:mod:`coalition.text`): no control
#: character (NUL, newline, tab, escape...), no bidirectional override.
LINE = full_match(text.LINE_BODY, text.RULE)
#: The ids this service makes (``txn_01J...``): the shape of every id in a path.
ID_PATTERN = full_match(r"[A-Za-z0-9_-]{1,64}", "an id: 1 to 64 of [A-Za-z0-9_-]")
MEMBER_ID_PATTERN = full_match(MEMBER_ID_BODY, f"a member id: {MEMBER_ID_RULE}")

#: Visible ASCII, 1 to 255 characters: the partner's order or receipt id.
Reference = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=255,
        pattern=full_match(r"[\x21-\x7e]+", "1 to 255 visible ASCII characters"),
        description="The partner's order or receipt id: 1-255 visible ASCII characters, "
        "unique per partner and operation.",
        examples=["order-10001"],
    ),
]
MemberId = Annotated[
    str,
    Meta(
        min_length=5,
        max_length=MEMBER_ID_MAX_LENGTH,
        pattern=MEMBER_ID_PATTERN,
        description=f"A member id: {MEMBER_ID_RULE}.",
        examples=["mem_01JD3V6Z7Q3XKQ8R2M5N4P6T9W"],
    ),
]
#: A decimal amount in major units as a string (``"12.50"``); the currency decides decimals.
Amount = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=24,
        pattern=full_match(
            r"[0-9]{1,10}(\.[0-9]{1,4})?", "a decimal string in major units, e.g. 12.50"
        ),
        description="A decimal string in major units with at most the currency's ISO 4217 "
        "decimals (JPY 0, EUR 2, BHD 3).",
        examples=["12.50"],
    ),
]
Currency = Annotated[
    str,
    Meta(
        min_length=3,
        max_length=3,
        pattern=full_match("[A-Z]{3}", "an ISO 4217 code, e.g. EUR"),
        description="An ISO 4217 code.",
        examples=["EUR"],
    ),
]
Points = Annotated[int, Meta(ge=1, le=MAX_POINTS, description="Whole points.")]
SignedPoints = Annotated[
    int,
    Meta(ge=-MAX_POINTS, le=MAX_POINTS, description="Whole points, positive or negative, not 0."),
]
AwareTime = Annotated[
    datetime,
    Meta(
        tz=True,
        description=f"RFC 3339 with a time zone, e.g. 2026-01-05T09:00:00Z: {TIME_RULE}.",
    ),
]
Rate = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=32,
        pattern=full_match(
            r"[0-9]{1,18}(\.[0-9]{1,12})?", "a non-negative decimal string, e.g. 0.01"
        ),
        description="A non-negative decimal string with at most 12 decimals.",
        examples=["0.01"],
    ),
]
Reason = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=REASON_MAX,
        pattern=LINE,
        description="Why, for the audit: one line.",
    ),
]
Name = Annotated[
    str, Meta(min_length=1, max_length=NAME_MAX, pattern=LINE, description="A name: one line.")
]
PublicKey = Annotated[
    str,
    Meta(
        min_length=43,
        max_length=44,
        pattern=full_match("[A-Za-z0-9_-]{43}=?", "32 bytes in base64url (43 characters)"),
        description="The raw 32-byte Ed25519 public key, base64url.",
    ),
]
FundedBy = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=40,
        pattern=full_match("coalition|prt_[A-Za-z0-9]{1,36}", "a partner id or coalition"),
        description="A partner id or `coalition`.",
    ),
]
#: An id in a path (``/v1/transactions/{txn_id}``): anything else is ``422`` at ``path.<name>``.
IdPath = Annotated[str, PathParameter(min_length=1, max_length=64, pattern=ID_PATTERN)]
#: An id in a query: optional (a filter), or required (``IdQueryRequired``).
IdQuery = Annotated[str | None, QueryParameter(min_length=1, max_length=64, pattern=ID_PATTERN)]
IdQueryRequired = Annotated[str, QueryParameter(min_length=1, max_length=64, pattern=ID_PATTERN)]
MemberIdPath = Annotated[
    str,
    PathParameter(
        min_length=5,
        max_length=MEMBER_ID_MAX_LENGTH,
        pattern=MEMBER_ID_PATTERN,
        description=f"A member id: {MEMBER_ID_RULE}.",
    ),
]
MemberIdQuery = Annotated[
    str | None,
    QueryParameter(
        min_length=5,
        max_length=MEMBER_ID_MAX_LENGTH,
        pattern=MEMBER_ID_PATTERN,
        description=f"A member id: {MEMBER_ID_RULE}.",
    ),
]
#: A cursor or a time in a query: printable, one line.
QueryText = Annotated[str | None, QueryParameter(max_length=200, pattern=LINE)]
Scope = Literal["earn", "burn", "read", "webhooks", "statements"]
KeyAlg = Literal["hmac-sha256", "ed25519"]
HoldStatus = Literal["active", "captured", "voided", "expired"]


class Request(Struct, forbid_unknown_fields=True):
    """Base of request bodies: unknown fields are refused; every time is bounded and in UTC
    (:func:`coalition.times.client_time`, ``validation`` at the field otherwise)."""

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, datetime):
                setattr(self, name, client_time(value, name))


# --- partner requests --------------------------------------------------------------------


class MemberCreate(Request):
    """``POST /v1/members``: a new member, optionally with the caller's own ``mem_`` id."""

    member_id: MemberId | None = None


class EarnCreate(Request):
    """``POST /v1/earns``: points for a purchase at the partner."""

    member_id: MemberId
    reference: Reference
    amount: Amount
    currency: Currency
    occurred_at: AwareTime | None = None


class BurnCreate(Request):
    """``POST /v1/burns``: points as payment, given ``points`` or ``amount`` + ``currency``."""

    member_id: MemberId
    reference: Reference
    points: Points | None = None
    amount: Amount | None = None
    currency: Currency | None = None
    basket_amount: Amount | None = None


class HoldCreate(Request):
    """``POST /v1/holds``: reserve points at checkout."""

    member_id: MemberId
    reference: Reference
    points: Points
    expires_in: Annotated[int, Meta(ge=1, description="Seconds until the hold expires.")] | None = (
        None
    )


class CaptureCreate(Request):
    """``POST /v1/holds/{hold_id}/capture``: burn the held points, or fewer."""

    points: Points | None = None


class EmptyBody(Request):
    """The body of a POST that takes none (void, revoke, acknowledge...): ``{}``."""


class ReversalCreate(Request):
    """``POST /v1/transactions/{txn_id}/reversals``: all that is left, or ``points``."""

    reference: Reference
    points: Points | None = None


# --- operator requests -------------------------------------------------------------------


class PartnerCreate(Request):
    """``POST /v1/admin/partners``."""

    name: Name
    currency: Currency


class PartnerUpdate(Request):
    """``PATCH /v1/admin/partners/{id}``: any of the fields."""

    name: Name | None = None
    currency: Currency | None = None
    status: Literal["active", "suspended"] | None = None


class RateCardCreate(Request):
    """``POST /v1/admin/partners/{id}/rate-cards``: a new version, never an edit."""

    earn_points_per_unit: Rate
    issue_price_per_point: Rate
    burn_value_per_point: Rate
    reimburse_price_per_point: Rate
    max_burn_share: Rate | None = None
    effective_from: AwareTime | None = None


class PartnerKeyCreate(Request):
    """``POST /v1/admin/partners/{id}/keys``."""

    alg: KeyAlg
    scopes: Annotated[list[Scope], Meta(min_length=1, max_length=5)]
    public_key: PublicKey | None = None
    expires_at: AwareTime | None = None


class OperatorKeyCreate(Request):
    """``POST /v1/admin/operator-keys``: a key for the operator or for finance."""

    role: Literal["operator", "finance"]
    alg: KeyAlg = "hmac-sha256"
    public_key: PublicKey | None = None
    expires_at: AwareTime | None = None


class BonusCreate(Request):
    """``POST /v1/admin/bonuses``: points for an action, funded by a partner or the coalition."""

    member_id: MemberId
    points: Points
    reason: Reason
    funded_by: FundedBy


class AdjustmentCreate(Request):
    """``POST /v1/admin/adjustments``: a correction, ``points`` positive or negative."""

    member_id: MemberId
    points: SignedPoints
    reason: Reason


# --- responses ---------------------------------------------------------------------------


class TransactionPage(Struct):
    """A page of transactions, newest first."""

    data: list[TransactionOut]
    has_more: bool
    next_cursor: str | None


class HoldOut(Struct):
    """A hold; one past ``expires_at`` reads as ``expired``."""

    id: str
    member_id: str
    points: int
    status: HoldStatus
    expires_at: datetime
    reference: str


class Expiring(Struct):
    """Points that expire together."""

    points: int
    expires_at: datetime


class BalanceOut(Struct):
    """A member's balance in plain terms."""

    member_id: str
    available: int
    held: int
    tier: str
    expiring: list[Expiring]


class MemberOut(Struct):
    """A member's id."""

    member_id: str


class PartnerOut(Struct):
    """A partner."""

    id: str
    name: str
    currency: str
    status: Literal["active", "suspended"]
    created_at: datetime


class PartnerPage(Struct):
    """A page of partners, newest first."""

    data: list[PartnerOut]
    has_more: bool
    next_cursor: str | None


class RateCardList(Struct):
    """Every version of a partner's rate card, newest first."""

    data: list[RateCardOut]


class KeyCreated(Struct, omit_defaults=True):
    """A new key; ``secret`` (hmac-sha256 only) is shown here and never again."""

    key_id: str
    alg: KeyAlg
    scopes: list[str]
    role: Literal["partner", "operator", "finance"]
    partner_id: str | None
    expires_at: datetime | None
    secret: str | None = None


class KeyOut(Struct):
    """A key as listed: never its secret."""

    key_id: str
    alg: KeyAlg
    scopes: list[str]
    role: Literal["partner", "operator", "finance"]
    partner_id: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class KeyList(Struct):
    """A partner's keys, oldest first, revoked and expired ones included."""

    data: list[KeyOut]


class Me(Struct):
    """Who is calling: the key, its partner (for partner keys) and that partner's rate card."""

    key_id: str
    role: Literal["partner", "operator", "finance"]
    scopes: list[str]
    partner: PartnerOut | None
    rate_card: RateCardOut | None


class LiabilityReport(Struct):
    """Outstanding points (the operator's liability) and the flows that make them up.

    ``outstanding_points = issued_points - earn_reversed_points - redeemed_points
    + burn_reversed_points - expired_points + adjusted_points``.
    """

    as_of: datetime
    outstanding_points: int
    issued_points: int
    earned_points: int
    bonus_points: int
    earn_reversed_points: int
    redeemed_points: int
    burn_reversed_points: int
    expired_points: int
    adjusted_points: int


class ReplicaHealth(Struct):
    """The read replica as this process last measured it (``COALITION_REPLICA_DATABASE_URL``)."""

    #: ``lagging``: past ``COALITION_REPLICA_MAX_LAG_S``; ``unknown``: not measured yet.
    status: Literal["ok", "lagging", "unreachable", "unknown"]
    #: Where the reads that may be a moment old go now.
    reads: Literal["replica", "primary"]
    lag_s: float | None = None
    lag_bytes: int | None = None


class Health(Struct, omit_defaults=True):
    """The service and its database are up (and, when one is configured, how its read replica
    is: it never makes the service unready, its reads then go to the primary)."""

    status: Literal["ok"]
    database: Literal["ok"]
    replica: ReplicaHealth | None = None


class SigningKey(Struct):
    """A statement-signing public key (raw Ed25519, base64url)."""

    kid: str
    alg: Literal["ed25519"]
    public_key: str


class AuditEventOut(Struct):
    """One operator or finance action: who (role, key), what (method, path and query as
    received, or the command), when, from where (an address, or ``command-line``), and the
    outcome (``ok``, ``replayed`` or the problem type); ``status`` is None for a command."""

    id: str
    at: datetime
    role: Literal["operator", "finance"]
    key_id: str
    action: str
    source_address: str | None
    status: int | None
    outcome: str
    request_id: str | None


class AuditPage(Struct):
    """A page of audit events, newest first."""

    data: list[AuditEventOut]
    has_more: bool
    next_cursor: str | None


class FieldError(Struct):
    """One invalid field: where (``$.amount``) and what is wrong."""

    path: str
    message: str


class Problem(Struct, omit_defaults=True, forbid_unknown_fields=False):
    """An RFC 9457 problem document (``application/problem+json``).

    Kinds may add members: ``errors`` (validation), ``reason`` (signature-invalid),
    ``transaction_id`` (duplicate-reference), ``available`` and ``requested``
    (insufficient-points), ``error_id`` (500)...
    """

    type: str
    title: str
    status: int
    detail: str
    request_id: str
    errors: list[FieldError] | None = None


class Liveness(Struct):
    """The process is alive (no database consulted)."""

    status: Literal["ok"]
