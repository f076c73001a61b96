"""Request authentication: RFC 9421 HTTP Message Signatures made with an API key.

:func:`verify_request` decides who sent a request, or raises
:class:`~coalition.errors.SignatureInvalid` with a ``reason`` naming the check that failed.
The policy (which components must be covered, the clock window, key state, digests, nonces)
lives here; the RFC 9421 canonicalisation (the signature base) and the HMAC-SHA256 / Ed25519
verification are the ``http-message-signatures`` library's.

Order of the checks for one signature (the first failure is the reason given):

1. the ``Signature-Input`` / ``Signature`` fields parse (``missing-signature``,
   ``malformed-signature``); labels whose ``keyid`` names no key are skipped
   (``unknown-key`` when none names a known key);
2. the key: ``revoked-key``, ``expired-key``, ``alg-mismatch``;
3. the clock: ``created`` within :data:`WINDOW` of ``now`` (``stale``, ``future``), ``expires``
   (``expired-signature``);
4. coverage: ``missing-component`` (``"@method"``, ``"@target-uri"`` or ``"@authority"`` +
   ``"@path"`` [+ ``"@query"``], ``"content-digest"`` for a body);
5. ``Content-Digest`` against the body bytes (``digest-missing``, ``digest-mismatch``);
6. the signature itself (``bad-signature``), against the URL as received and the alternates;
7. the ``nonce``, recorded once per key within the window (``replayed-nonce``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import http_sf
from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from http_message_signatures import (
    HTTPMessageSignaturesException,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
)
from http_message_signatures.algorithms import HMAC_SHA256, HTTPSignatureAlgorithm
from sqlalchemy import delete, or_, select, update
from sqlalchemy import insert as portable_insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from coalition.errors import SignatureInvalid
from partners.keys import ed25519_verify, unseal
from partners.models import ApiKey, RequestNonce

#: ``created`` may be this far from the server's clock, either side.
WINDOW = timedelta(seconds=300)
#: A nonce is kept this long after its signature stops verifying (``created`` + WINDOW), so
#: that clock differences between API processes and the purge job cannot reopen the window.
NONCE_MARGIN = timedelta(seconds=60)
#: ``last_used_at`` is written at most this often per key.
LAST_USED_INTERVAL = timedelta(seconds=60)
#: Signatures one request may carry (each may cost a verification per candidate URL).
MAX_SIGNATURES = 8
#: The longest nonce the request_nonces table holds.
MAX_NONCE_LENGTH = 255

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


class _StrictEd25519(HTTPSignatureAlgorithm):
    """Ed25519 verified by libsodium (:func:`partners.keys.ed25519_verify`), not by the
    library's default, which accepts signatures made "with" a small-order public key."""

    algorithm_id = "ed25519"

    def __init__(self, public_key: bytes | None = None, private_key: None = None) -> None:
        assert isinstance(public_key, bytes), "verification only, with the raw public key"
        self.public_key = public_key

    def verify(self, signature: bytes, message: bytes) -> None:
        if not ed25519_verify(self.public_key, signature, message):
            raise CryptoInvalidSignature


ALGORITHMS: dict[str, type[HTTPSignatureAlgorithm]] = {
    "hmac-sha256": HMAC_SHA256,
    "ed25519": _StrictEd25519,
}
DIGESTS: dict[str, Callable[[bytes], Any]] = {
    "sha-256": hashlib.sha256,
    "sha-512": hashlib.sha512,
}
#: Signature parameters RFC 9421 defines; any other makes the signature malformed.
PARAMETERS = frozenset({"alg", "created", "expires", "keyid", "nonce", "tag"})
_STRING_PARAMETERS = ("alg", "keyid", "nonce", "tag")
_INTEGER_PARAMETERS = ("created", "expires")
_PRINTABLE_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who signed a request: the key and what it may do."""

    key_id: str
    role: str  # "partner" | "operator" | "finance"
    partner_id: str | None  # set for partner keys only
    scopes: frozenset[str]  # partner keys: subset of earn, burn, read, webhooks, statements


def _fail(reason: str, detail: str, **extra: Any) -> SignatureInvalid:
    """The error for one failed check; ``detail`` never holds a secret or a signature value."""
    assert reason in REASONS, reason
    return SignatureInvalid(detail, reason=reason, **extra)


@dataclass(frozen=True, slots=True)
class _Component:
    name: str
    params: tuple[tuple[str, Any], ...]

    @property
    def bare(self) -> bool:
        return not self.params


@dataclass(slots=True)
class _Signature:
    """One labelled signature as parsed from ``Signature-Input`` and ``Signature``."""

    label: str
    components: list[_Component]
    params: dict[str, Any]
    input_member: Any
    value_member: Any = field(default=None)


@dataclass(slots=True)
class _Message:
    """The request as the library's component resolver reads it (method, url, headers)."""

    method: str
    url: str
    headers: dict[str, str]


class _KeyResolver(HTTPSignatureKeyResolver):
    def __init__(self, key_id: str, key: bytes) -> None:
        self._key_id = key_id
        self._key = key

    def resolve_public_key(self, key_id: str) -> bytes | None:
        return self._key if key_id == self._key_id else None

    def resolve_private_key(self, key_id: str) -> None:
        raise NotImplementedError("verification only")


class _Verifier(HTTPMessageVerifier):
    """The library's verifier, without its own wall-clock checks: ``created`` and ``expires``
    are checked by :func:`verify_request` against the caller's ``now`` (one clock, testable)."""

    require_created = True

    def validate_created_and_expires(self, sig_input: Any, max_age: Any = None) -> None:
        return None


def _field_lines(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-case names; repeated names (in any case) joined with ", " in order."""
    fields: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        fields[lower] = f"{fields[lower]}, {value}" if lower in fields else value
    return fields


def _reject_duplicate(key: str, context: str) -> None:
    raise ValueError(f"duplicate {context} key {key!r}")


def _parse_dictionary(name: str, value: str) -> dict[str, Any]:
    try:
        parsed = http_sf.parse(
            value.encode("ascii"), tltype="dictionary", on_duplicate_key=_reject_duplicate
        )
    except (ValueError, UnicodeError) as e:
        raise _fail("malformed-signature", f"{name} is not a valid structured dictionary") from e
    assert isinstance(parsed, dict)
    return parsed


def _parse_signatures(fields: Mapping[str, str]) -> list[_Signature]:
    if "signature-input" not in fields or "signature" not in fields:
        raise _fail(
            "missing-signature",
            "the request is not signed: Signature-Input and Signature headers are required",
        )
    inputs = _parse_dictionary("Signature-Input", fields["signature-input"])
    values = _parse_dictionary("Signature", fields["signature"])
    if not inputs:
        raise _fail("missing-signature", "Signature-Input holds no signature")
    if len(inputs) > MAX_SIGNATURES:
        raise _fail("malformed-signature", f"at most {MAX_SIGNATURES} signatures per request")
    signatures: list[_Signature] = []
    for label, member in inputs.items():
        if not (isinstance(member, tuple) and isinstance(member[0], list)):
            raise _fail("malformed-signature", f"Signature-Input member {label!r} is not a list")
        components: list[_Component] = []
        for item in member[0]:
            value, params = item
            if not isinstance(value, str):  # a token or a number
                raise _fail(
                    "malformed-signature",
                    f"signature {label!r}: covered components must be quoted strings",
                )
            components.append(_Component(value, tuple(params.items())))
        signatures.append(_Signature(label, components, dict(member[1]), member, values.get(label)))
    return signatures


def _check_parameters(sig: _Signature) -> None:
    for name in sig.params:
        if name not in PARAMETERS:
            raise _fail(
                "malformed-signature", f"signature {sig.label!r}: unknown parameter {name!r}"
            )
    for name in _STRING_PARAMETERS:
        if name in sig.params and not isinstance(sig.params[name], str):
            raise _fail("malformed-signature", f"signature {sig.label!r}: {name} must be a string")
    for name in _INTEGER_PARAMETERS:
        if name in sig.params and type(sig.params[name]) is not int:
            raise _fail(
                "malformed-signature", f"signature {sig.label!r}: {name} must be an integer"
            )
    value = sig.value_member
    if value is None:
        raise _fail("malformed-signature", f"Signature has no member {sig.label!r}")
    if not (isinstance(value, tuple) and isinstance(value[0], bytes) and value[0]):
        raise _fail("malformed-signature", f"Signature member {sig.label!r} is not a byte sequence")
    if "created" not in sig.params:
        raise _fail(
            "malformed-signature", f"signature {sig.label!r}: the created parameter is required"
        )
    nonce = sig.params.get("nonce")
    if nonce is not None and not 0 < len(nonce) <= MAX_NONCE_LENGTH:
        raise _fail(
            "malformed-signature",
            f"signature {sig.label!r}: nonce must be 1 to {MAX_NONCE_LENGTH} characters",
        )


def _check_key(key: ApiKey, sig: _Signature, now: datetime) -> None:
    if key.revoked_at is not None:
        raise _fail("revoked-key", f"key {key.id} was revoked")
    if key.expires_at is not None and key.expires_at <= now:
        raise _fail("expired-key", f"key {key.id} expired at {key.expires_at.isoformat()}")
    alg = sig.params.get("alg")
    if alg is not None and alg != key.alg:
        raise _fail(
            "alg-mismatch",
            f"signature {sig.label!r} says alg {_printable(alg)!r} but key {key.id} is {key.alg}",
        )


def _check_clock(sig: _Signature, now: datetime) -> None:
    now_ts = now.timestamp()
    created: int = sig.params["created"]
    window = WINDOW.total_seconds()
    if now_ts - created > window:
        raise _fail(
            "stale",
            f"signature created {int(now_ts - created)} s ago; at most {int(window)} s allowed",
        )
    if created - now_ts > window:
        raise _fail(
            "future",
            f"signature created {int(created - now_ts)} s in the future; at most {int(window)} s "
            "allowed (check the client's clock)",
        )
    expires = sig.params.get("expires")
    if expires is not None and now_ts > expires:
        raise _fail("expired-signature", f"signature expired {int(now_ts - expires)} s ago")


def _is_digest_component(c: _Component) -> bool:
    return c.name == "content-digest" and not {k for k, _ in c.params} - {"sf", "key"}


def _check_coverage(sig: _Signature, url: str, body: bytes) -> None:
    bare = {c.name for c in sig.components if c.bare}

    def missing(component: str, detail: str = "") -> SignatureInvalid:
        return _fail(
            "missing-component",
            detail or f"signature {sig.label!r} must cover {component}",
            component=component,
        )

    if "@method" not in bare:
        raise missing('"@method"')
    if "@target-uri" not in bare:
        if not bare & {"@authority", "@path", "@query"}:
            raise missing(
                '"@target-uri"',
                f'signature {sig.label!r} must cover "@target-uri" '
                '(or "@authority", "@path" and, with a query, "@query")',
            )
        for name in ("@authority", "@path"):
            if name not in bare:
                raise missing(f'"{name}"')
        if urllib.parse.urlsplit(url).query and "@query" not in bare:
            raise missing('"@query"')
    if body:
        digests = [c for c in sig.components if _is_digest_component(c)]
        if not digests:
            raise missing('"content-digest"')
        keyed = [dict(c.params).get("key") for c in digests]
        if all(k is not None and k not in DIGESTS for k in keyed):
            raise missing(
                '"content-digest"',
                f"signature {sig.label!r} covers only Content-Digest members we do not support; "
                "cover the whole field or its sha-256 or sha-512 member",
            )


def _check_digest(fields: Mapping[str, str], body: bytes) -> None:
    """Every sha-256 / sha-512 member of Content-Digest must match the body; a body needs one."""
    raw = fields.get("content-digest")
    if raw is None:
        if body:
            raise _fail("digest-missing", "a request with a body needs a Content-Digest header")
        return
    try:
        members = http_sf.parse(
            raw.encode("ascii"), tltype="dictionary", on_duplicate_key=_reject_duplicate
        )
    except (ValueError, UnicodeError):
        raise _fail("digest-mismatch", "Content-Digest is not a valid RFC 9530 field") from None
    assert isinstance(members, dict)
    supported = 0
    for name, member in members.items():
        if name not in DIGESTS:
            continue
        value = member[0] if isinstance(member, tuple) else None
        if not isinstance(value, bytes):
            raise _fail("digest-mismatch", f"Content-Digest {name} is not a byte sequence")
        if not hmac.compare_digest(value, DIGESTS[name](body).digest()):
            raise _fail("digest-mismatch", f"Content-Digest {name} does not match the body")
        supported += 1
    if body and not supported:
        raise _fail("digest-missing", "Content-Digest has no sha-256 or sha-512 digest")


def _url_variants(url: str) -> list[str]:
    """The URL as given, and spelled with and without the scheme's default port."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return [url]
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    variants = [url]
    if default is not None and port in (None, default):
        for netloc in (host, f"{host}:{default}"):
            rebuilt = urllib.parse.urlunsplit(
                (parts.scheme.lower(), netloc, parts.path, parts.query, "")
            )
            if parts.query == "" and url.endswith("?"):
                rebuilt += "?"
            variants.append(rebuilt)
    return list(dict.fromkeys(variants))


def _verification_key(key: ApiKey, secret_key: bytes) -> bytes:
    if key.alg == "hmac-sha256":
        assert key.secret_sealed is not None
        # ValueError when COALITION_SECRET_KEY is not the one that sealed it: a server
        # misconfiguration (500), not the client's fault, so it is not a SignatureInvalid.
        return unseal(secret_key, key.id, key.secret_sealed)
    assert key.public_key is not None
    return key.public_key


def _check_signature(
    sig: _Signature,
    key: ApiKey,
    verification_key: bytes,
    *,
    method: str,
    urls: Sequence[str],
    fields: Mapping[str, str],
) -> None:
    """Verify the signature (the library builds the signature base) against any of ``urls``."""
    # Only this label's members, so the library sees exactly one signature to verify.
    single = dict(fields)
    single["signature-input"] = http_sf.ser({sig.label: sig.input_member})
    single["signature"] = http_sf.ser({sig.label: sig.value_member})
    verifier = _Verifier(
        signature_algorithm=ALGORITHMS[key.alg],
        key_resolver=_KeyResolver(key.id, verification_key),
    )
    problem = "the signature does not match the request"
    for url in urls:
        try:
            verifier.verify(_Message(method, url, single), max_age=None)
        except HTTPMessageSignaturesException as e:
            cause = e.__cause__
            if not isinstance(cause, CryptoInvalidSignature):
                # A covered component the request lacks, an unusable URL...: the library's
                # message names the component, never a value or the signature.
                problem = f"the signature cannot be checked: {cause or e}"
            continue
        return
    raise _fail(
        "bad-signature",
        f"signature {sig.label!r}: {problem} (method, target URI, covered headers and "
        "parameters must be exactly what was signed, with this key)",
    )


def _nonce_insert(session: Session) -> Any:
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    return None


def _record_nonce(session: Session, key_id: str, nonce: str, created: int, now: datetime) -> bool:
    """Remember ``nonce`` for the key; False if it is already remembered (a replay).

    One statement: INSERT ... ON CONFLICT DO UPDATE ... WHERE the old row has expired ...
    RETURNING. Two concurrent requests with the same nonce: PostgreSQL makes the second wait
    for the first's transaction, then finds the row (no row returned): exactly one succeeds.
    An expired row not yet purged is taken over, so only the window counts.
    """
    expires_at = datetime.fromtimestamp(created, tz=now.tzinfo) + WINDOW + NONCE_MARGIN
    insert = _nonce_insert(session)
    values = {"key_id": key_id, "nonce": nonce, "expires_at": expires_at}
    if insert is None:  # another dialect: the primary key, inside a savepoint
        try:
            with session.begin_nested():
                session.execute(portable_insert(RequestNonce).values(**values))
        except IntegrityError:
            return False
        return True
    stmt = insert(RequestNonce).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[RequestNonce.key_id, RequestNonce.nonce],
        set_={"expires_at": stmt.excluded.expires_at},
        where=RequestNonce.expires_at < now,
    ).returning(RequestNonce.key_id)
    return session.execute(stmt).first() is not None


def _touch(session: Session, key: ApiKey, now: datetime) -> None:
    """``last_used_at = now`` unless it was set within the last minute (no hot row).

    The loaded row says whether it is due (no statement at all for most requests); the
    conditional UPDATE settles races between processes.
    """
    if key.last_used_at is not None and key.last_used_at >= now - LAST_USED_INTERVAL:
        return
    result = session.execute(
        update(ApiKey)
        .where(
            ApiKey.id == key.id,
            or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USED_INTERVAL),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) == 1:
        set_committed_value(key, "last_used_at", now)


def _printable(text: str) -> str:
    return text if _PRINTABLE_ID.fullmatch(text) else "(not shown)"


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
) -> Principal:
    """The principal whose key signed this request (RFC 9421, the contract's profile).

    ``url`` is the target URI as received (scheme://host[:port]/path?query);
    ``alternate_urls`` (e.g. rebuilt from COALITION_PUBLIC_URL behind a proxy) are tried too,
    each also spelled with and without its default port. Runs in the caller's transaction:
    it records the signature's nonce and may update the key's ``last_used_at``.

    Raises :class:`~coalition.errors.SignatureInvalid` with ``extra["reason"]`` (one of
    :data:`REASONS`; ``missing-component`` also names it in ``extra["component"]``). If several
    signatures are present, the first one that verifies wins; if none does, the failure of the
    first one whose ``keyid`` names a known key is reported. A sealed HMAC secret that does not
    open under ``secret_key`` raises ValueError (a server misconfiguration).
    """
    assert now.tzinfo is not None, "now must be timezone-aware"
    fields = _field_lines(headers)
    signatures = _parse_signatures(fields)
    key_ids = {
        s.params["keyid"]
        for s in signatures
        if isinstance(s.params.get("keyid"), str) and len(s.params["keyid"]) <= 255
    }
    if not key_ids:
        raise _fail("malformed-signature", "the signature has no keyid parameter")
    keys = {k.id: k for k in session.scalars(select(ApiKey).where(ApiKey.id.in_(key_ids)))}
    candidates = [s for s in signatures if s.params.get("keyid") in keys]
    if not candidates:
        shown = ", ".join(sorted(_printable(k) for k in key_ids))
        raise _fail("unknown-key", f"no API key with id {shown}")
    urls = list(dict.fromkeys(v for u in (url, *alternate_urls) for v in _url_variants(u)))
    failures: list[SignatureInvalid] = []
    for sig in candidates:
        key = keys[sig.params["keyid"]]
        try:
            _check_parameters(sig)
            _check_key(key, sig, now)
            _check_clock(sig, now)
            _check_coverage(sig, url, body)
            _check_digest(fields, body)
            _check_signature(
                sig,
                key,
                _verification_key(key, secret_key),
                method=method,
                urls=urls,
                fields=fields,
            )
            nonce = sig.params.get("nonce")
            if nonce is not None and not _record_nonce(
                session, key.id, nonce, sig.params["created"], now
            ):
                raise _fail("replayed-nonce", f"nonce already used with key {key.id}")
        except SignatureInvalid as e:
            failures.append(e)
            continue
        _touch(session, key, now)
        return Principal(
            key_id=key.id,
            role=key.role,
            partner_id=key.partner_id,
            scopes=frozenset(key.scopes.split()) if key.role == "partner" else frozenset(),
        )
    raise failures[0]


def purge_nonces(session: Session, now: datetime) -> int:
    """Delete remembered nonces whose window has passed; the number deleted (a scheduled job)."""
    result = session.execute(
        delete(RequestNonce)
        .where(RequestNonce.expires_at < now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0))
