"""The verification policy: which signed requests this service accepts (the contract's
profile of RFC 9421), and what an accepted one writes.

Order of the checks for one signature (the first failure is the reason given):

1. the ``Signature-Input`` / ``Signature`` fields parse (``missing-signature``,
   ``malformed-signature``; :mod:`.fields`); labels whose ``keyid`` names no key are skipped
   (``unknown-key`` when none names a known key);
2. the parameters: only RFC 9421's, of their types, ``created`` present, a nonce of 1 to 255
   characters (``malformed-signature``);
3. the key: ``revoked-key``, ``expired-key``, ``alg-mismatch``;
4. the clock: ``created`` within :data:`WINDOW` of ``now`` (``stale``, ``future``), ``expires``
   (``expired-signature``);
5. coverage: ``missing-component`` (``"@method"``, ``"@target-uri"`` or ``"@authority"`` +
   ``"@path"`` [+ ``"@query"``], ``"content-digest"`` for a body);
6. ``Content-Digest`` against the body bytes (``digest-missing``, ``digest-mismatch``);
7. the signature itself (``bad-signature``; :mod:`.base`), against the URL as received and
   the alternates;
8. in the request's own database transaction (:func:`record_use`): the ``nonce``, remembered
   once per key within the window (``replayed-nonce``; :mod:`.nonces`), and the key's
   revocation as the database has it now (``revoked-key``; :mod:`.keycache`).

Checks 1-7 need no database: :func:`verify_signature` runs them against the keys of the
process's :class:`~.keycache.KeyCache`.
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from coalition.errors import SignatureInvalid, invariant
from coalition.hot import Prelude
from partners.signatures import nonces
from partners.signatures.base import check_signature
from partners.signatures.fields import (
    Component,
    Signature,
    SignedRequest,
    digest_members,
    parse_signed,
)
from partners.signatures.keycache import CachedKey, KeyCache
from partners.signatures.nonces import MAX_NONCE_LENGTH
from partners.signatures.refusals import fail, printable

#: ``created`` may be this far from the server's clock, either side.
WINDOW = timedelta(seconds=300)
DIGESTS: dict[str, Callable[[bytes], Any]] = {
    "sha-256": hashlib.sha256,
    "sha-512": hashlib.sha512,
}
#: Signature parameters RFC 9421 defines; any other makes the signature malformed.
PARAMETERS = frozenset({"alg", "created", "expires", "keyid", "nonce", "tag"})
_STRING_PARAMETERS = ("alg", "keyid", "nonce", "tag")
_INTEGER_PARAMETERS = ("created", "expires")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who signed a request: the key and what it may do."""

    key_id: str
    role: str  # "partner" | "operator" | "finance"
    partner_id: str | None  # set for partner keys only
    scopes: frozenset[str]  # partner keys: subset of earn, burn, read, webhooks, statements


@dataclass(frozen=True, slots=True)
class Verified:
    """A request whose signature verified: who signed it, and what :func:`record_use` writes."""

    principal: Principal
    nonce: str | None
    created: int
    now: datetime
    signed: SignedRequest

    @property
    def verifies_until(self) -> datetime:
        """When this signature stops verifying (``created`` + :data:`WINDOW`)."""
        return datetime.fromtimestamp(self.created, tz=self.now.tzinfo) + WINDOW


def verify_signature(
    keys: Mapping[str, CachedKey],
    signed: SignedRequest,
    *,
    method: str,
    url: str,
    body: bytes,
    now: datetime,
    alternate_urls: Sequence[str] = (),
) -> Verified:
    """Who signed this request (RFC 9421, the contract's profile), from ``keys`` alone.

    ``keys``: the keys the request names that exist (:meth:`KeyCache.cached` /
    :meth:`KeyCache.load` of ``signed.key_ids``). ``url`` is the target URI as received
    (scheme://host[:port]/path?query); ``alternate_urls`` (e.g. rebuilt from
    COALITION_PUBLIC_URL behind a proxy) are tried too, each also spelled with and without its
    default port. Touches no database: the nonce, the key's revalidation and ``last_used_at``
    are :func:`record_use`'s, in the request's transaction.

    Raises :class:`~coalition.errors.SignatureInvalid` with ``extra["reason"]`` (one of
    :data:`~.refusals.REASONS`; ``missing-component`` also names it in
    ``extra["component"]``). If several signatures are present, the first one that verifies
    wins; if none does, the failure of the first one whose ``keyid`` names a known key is
    reported.
    """
    invariant(now.tzinfo is not None, "now must be timezone-aware")
    fields = signed.fields
    candidates = [s for s in signed.signatures if s.params.get("keyid") in keys]
    if not candidates:
        shown = ", ".join(sorted(printable(k) for k in signed.key_ids))
        raise fail("unknown-key", f"no API key with id {shown}")
    failures: list[SignatureInvalid] = []
    for sig in candidates:
        key = keys[sig.params["keyid"]]
        try:
            _check_parameters(sig)
            _check_key(key, sig, now)
            _check_clock(sig, now)
            _check_coverage(sig, url, body)
            _check_digest(fields, body)
            check_signature(
                sig, key, method=method, url=url, alternate_urls=alternate_urls, fields=fields
            )
        except SignatureInvalid as e:
            failures.append(e)
            continue
        principal = Principal(
            key_id=key.id, role=key.role, partner_id=key.partner_id, scopes=key.scopes
        )
        return Verified(principal, sig.params.get("nonce"), sig.params["created"], now, signed)
    raise failures[0]


def record_use(
    session: Session, verified: Verified, cache: KeyCache, *, nonce: bool = True
) -> None:
    """What a verified request writes, in its own transaction: its nonce (``replayed-nonce``
    if the key used it within the window; not when ``nonce`` is false: the Idempotency-Key
    claim writes it, :func:`nonce_prelude`), the key's revalidation (``revoked-key``) and its
    ``last_used_at`` (at most once a minute)."""
    key_id = verified.principal.key_id
    if nonce and verified.nonce is not None:
        nonces.use(
            session,
            key_id,
            verified.nonce,
            verifies_until=verified.verifies_until,
            now=verified.now,
        )
    cache.revalidate(session, key_id)
    cache.touch(session, key_id, verified.now)


def nonce_prelude(verified: Verified) -> Prelude | None:
    """The request's nonce (if it has one) as the write the request's first statement makes in
    its own round trip (a POST's Idempotency-Key claim; ``replayed-nonce`` as
    :func:`record_use`)."""
    if verified.nonce is None:
        return None
    return nonces.prelude(
        verified.principal.key_id,
        verified.nonce,
        verifies_until=verified.verifies_until,
        now=verified.now,
    )


def verify_request(
    session: Session,
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    secret_key: bytes,
    now: datetime,
    alternate_urls: Sequence[str] = (),
    cache: KeyCache | None = None,
) -> Principal:
    """:func:`verify_signature` and :func:`record_use` in the caller's transaction: the
    principal whose key signed this request. Keys come from ``cache`` (a fresh one, reading the
    database, when not given)."""
    keys = cache or KeyCache(secret_key)
    signed = parse_signed(headers)
    found = keys.cached(signed.key_ids)
    if len(found) < len(signed.key_ids):
        found.update(keys.load(session, signed.key_ids - found.keys()))
    verified = verify_signature(
        found,
        signed,
        method=method,
        url=url,
        body=body,
        now=now,
        alternate_urls=alternate_urls,
    )
    record_use(session, verified, keys)
    return verified.principal


# --- the checks, in order ----------------------------------------------------------------------
def _check_parameters(sig: Signature) -> None:
    for name in sig.params:
        if name not in PARAMETERS:
            raise fail(
                "malformed-signature", f"signature {sig.label!r}: unknown parameter {name!r}"
            )
    for name in _STRING_PARAMETERS:
        if name in sig.params and not isinstance(sig.params[name], str):
            raise fail("malformed-signature", f"signature {sig.label!r}: {name} must be a string")
    for name in _INTEGER_PARAMETERS:
        if name in sig.params and type(sig.params[name]) is not int:
            raise fail("malformed-signature", f"signature {sig.label!r}: {name} must be an integer")
    value = sig.value_member
    if value is None:
        raise fail("malformed-signature", f"Signature has no member {sig.label!r}")
    if not (isinstance(value, tuple) and isinstance(value[0], bytes) and value[0]):
        raise fail("malformed-signature", f"Signature member {sig.label!r} is not a byte sequence")
    if "created" not in sig.params:
        raise fail(
            "malformed-signature", f"signature {sig.label!r}: the created parameter is required"
        )
    nonce = sig.params.get("nonce")
    if nonce is not None and not 0 < len(nonce) <= MAX_NONCE_LENGTH:
        raise fail(
            "malformed-signature",
            f"signature {sig.label!r}: nonce must be 1 to {MAX_NONCE_LENGTH} characters",
        )


def _check_key(key: CachedKey, sig: Signature, now: datetime) -> None:
    if key.revoked_at is not None:
        raise fail("revoked-key", f"key {key.id} was revoked")
    if key.expires_at is not None and key.expires_at <= now:
        raise fail("expired-key", f"key {key.id} expired at {key.expires_at.isoformat()}")
    alg = sig.params.get("alg")
    if alg is not None and alg != key.alg:
        raise fail(
            "alg-mismatch",
            f"signature {sig.label!r} says alg {printable(alg)!r} but key {key.id} is {key.alg}",
        )


def _check_clock(sig: Signature, now: datetime) -> None:
    now_ts = now.timestamp()
    created: int = sig.params["created"]
    window = WINDOW.total_seconds()
    if now_ts - created > window:
        raise fail(
            "stale",
            f"signature created {int(now_ts - created)} s ago; at most {int(window)} s allowed",
        )
    if created - now_ts > window:
        raise fail(
            "future",
            f"signature created {int(created - now_ts)} s in the future; at most {int(window)} s "
            "allowed (check the client's clock)",
        )
    expires = sig.params.get("expires")
    if expires is not None and now_ts > expires:
        raise fail("expired-signature", f"signature expired {int(now_ts - expires)} s ago")


def _is_digest_component(c: Component) -> bool:
    return c.name == "content-digest" and not {k for k, _ in c.params} - {"sf", "key"}


def _missing(component: str, detail: str) -> SignatureInvalid:
    return fail("missing-component", detail, component=component)


def _check_coverage(sig: Signature, url: str, body: bytes) -> None:
    bare = {c.name for c in sig.components if c.bare}
    must = f"signature {sig.label!r} must cover"
    if "@method" not in bare:
        raise _missing('"@method"', f'{must} "@method"')
    if "@target-uri" not in bare:
        if not bare & {"@authority", "@path", "@query"}:
            raise _missing(
                '"@target-uri"',
                f'{must} "@target-uri" (or "@authority", "@path" and, with a query, "@query")',
            )
        for name in ("@authority", "@path"):
            if name not in bare:
                raise _missing(f'"{name}"', f'{must} "{name}"')
        if urllib.parse.urlsplit(url).query and "@query" not in bare:
            raise _missing('"@query"', f'{must} "@query"')
    if body:
        digests = [c for c in sig.components if _is_digest_component(c)]
        if not digests:
            raise _missing('"content-digest"', f'{must} "content-digest"')
        keyed = [dict(c.params).get("key") for c in digests]
        if all(k is not None and k not in DIGESTS for k in keyed):
            raise _missing(
                '"content-digest"',
                f"signature {sig.label!r} covers only Content-Digest members we do not support; "
                "cover the whole field or its sha-256 or sha-512 member",
            )


def _check_digest(fields: Mapping[str, str], body: bytes) -> None:
    """Every sha-256 / sha-512 member of Content-Digest must match the body; a body needs one."""
    raw = fields.get("content-digest")
    if raw is None:
        if body:
            raise fail("digest-missing", "a request with a body needs a Content-Digest header")
        return
    members = digest_members(raw)
    if members is None:
        raise fail("digest-mismatch", "Content-Digest is not a valid RFC 9530 field")
    supported = 0
    for name, member in members.items():
        if name not in DIGESTS:
            continue
        value = member[0] if isinstance(member, tuple) else None
        if not isinstance(value, bytes):
            raise fail("digest-mismatch", f"Content-Digest {name} is not a byte sequence")
        if not hmac.compare_digest(value, DIGESTS[name](body).digest()):
            raise fail("digest-mismatch", f"Content-Digest {name} does not match the body")
        supported += 1
    if body and not supported:
        raise fail("digest-missing", "Content-Digest has no sha-256 or sha-512 digest")
