"""Request authentication: RFC 9421 HTTP Message Signatures made with an API key.

:func:`verify_request` decides who sent a request, or raises
:class:`~coalition.errors.SignatureInvalid` with a ``reason`` naming the check that failed.
The policy (which components must be covered, the clock window, key state, digests, nonces)
lives here; the RFC 9421 canonicalisation (the signature base) is the ``http-message-signatures``
library's, except for the common case (bare derived components and whole header fields), whose
base :func:`_signature_base` builds in a fraction of the library's CPU; a signature that does
not match that base is checked by the library as before, so every refusal is the library's.

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
7. in the request's own database transaction (:func:`record_use`): the ``nonce``, recorded
   once per key within the window (``replayed-nonce``), and the key's revocation as the
   database has it now (``revoked-key``; the :class:`KeyCache` rereads it at most a second
   after it last did).

Checks 1-6 need no database: :func:`verify_signature` runs them against the process's
:class:`KeyCache`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, cast

import http_sf
from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from http_message_signatures import (
    HTTPMessageSignaturesException,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
)
from http_message_signatures._url import URLParts, parse_url
from http_message_signatures.algorithms import HMAC_SHA256, HTTPSignatureAlgorithm
from sqlalchemy import Table, bindparam, delete, or_, select, text, tuple_, update
from sqlalchemy import insert as portable_insert
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coalition.db import HotStatement, Prelude, dialect_of
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
#: Nonces one purge statement deletes.
NONCE_PURGE_BATCH = 10_000
#: Keys one process keeps in its :class:`KeyCache` (beyond, it starts over).
MAX_KEYS = 10_000

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
    #: The member's canonical serialisation (without ``label=``) when it arrived in that form.
    serialized: str | None = field(default=None)


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


# The canonical serialisations (RFC 8941 section 4.1) of what stock signers send: a dictionary
# of inner lists of bare strings with string or integer parameters (Signature-Input), and of
# byte sequences (Signature, Content-Digest). A field in exactly that form is read here, at a
# tenth of the CPU of the general parser, into the same values; any other form (other
# spacing, tokens, component parameters, a repeated key...) goes to ``http_sf``. Because only
# the canonical form is read here, a member's text is its re-serialisation.
_SF_KEY = r"[a-z*][a-z0-9_\-.*]*"
# a run of plain characters, then escapes each followed by such a run (one class match per
# run, not an alternation per character: half the CPU of the fields' regexes)
_SF_STRING = r'"[\x20\x21\x23-\x5b\x5d-\x7e]*(?:\\["\\][\x20\x21\x23-\x5b\x5d-\x7e]*)*"'
_SF_INTEGER = r"(?:0|-?[1-9][0-9]{0,14})"
_SF_PARAM = rf";{_SF_KEY}=(?:{_SF_STRING}|{_SF_INTEGER})"
_SF_INNER_LIST = rf"\((?:{_SF_STRING}(?: {_SF_STRING})*)?\)(?:{_SF_PARAM})*"
_CANONICAL_INPUTS = re.compile(rf"{_SF_KEY}={_SF_INNER_LIST}(?:, {_SF_KEY}={_SF_INNER_LIST})*")
_INPUT_MEMBER = re.compile(rf"({_SF_KEY})=(\(((?:{_SF_STRING}| )*)\)((?:{_SF_PARAM})*))")
_STRING = re.compile(_SF_STRING)
_PARAM = re.compile(rf";({_SF_KEY})=({_SF_STRING}|{_SF_INTEGER})")
_ESCAPED = re.compile(r"\\(.)")
_CANONICAL_BYTES = re.compile(
    rf"{_SF_KEY}=:[A-Za-z0-9+/]*={{0,2}}:(?:, {_SF_KEY}=:[A-Za-z0-9+/]*={{0,2}}:)*"
)
_BYTES_MEMBER = re.compile(rf"({_SF_KEY})=:([A-Za-z0-9+/]*={{0,2}}):")


def _sf_string(quoted: str) -> str:
    inner = quoted[1:-1]
    return _ESCAPED.sub(r"\1", inner) if "\\" in inner else inner


def _sf_bare(text: str) -> str | int:
    return _sf_string(text) if text[0] == '"' else int(text)


def _canonical_inputs(value: str) -> dict[str, tuple[Any, str]] | None:
    """``Signature-Input`` in canonical form: label -> (the parsed member, its text)."""
    if not _CANONICAL_INPUTS.fullmatch(value):
        return None
    found: dict[str, tuple[Any, str]] = {}
    for member in _INPUT_MEMBER.finditer(value):
        label, text, items, params = member.groups()
        names: list[tuple[str, dict[str, Any]]] = [
            (_sf_string(item), {}) for item in _STRING.findall(items)
        ]
        pairs = _PARAM.findall(params)
        parsed = {k: _sf_bare(v) for k, v in pairs}
        if label in found or len(parsed) != len(pairs):
            return None  # a repeated label or parameter: the general parser decides
        found[label] = ((names, parsed), text)
    return found


def _canonical_bytes(value: str) -> dict[str, Any] | None:
    """A dictionary of byte sequences in canonical form (padded base64), as ``http_sf``
    parses it."""
    if not _CANONICAL_BYTES.fullmatch(value):
        return None
    found: dict[str, Any] = {}
    for label, encoded in _BYTES_MEMBER.findall(value):
        if len(encoded) % 4:
            return None
        decoded = base64.b64decode(encoded)
        if label in found or base64.b64encode(decoded).decode("ascii") != encoded:
            return None
        found[label] = (decoded, {})
    return found


def _parse_dictionary(name: str, value: str) -> dict[str, Any]:
    try:
        parsed = http_sf.parse(
            value.encode("ascii"), tltype="dictionary", on_duplicate_key=_reject_duplicate
        )
    except (ValueError, UnicodeError) as e:
        raise _fail("malformed-signature", f"{name} is not a valid structured dictionary") from e
    assert isinstance(parsed, dict)
    return parsed


def _parse_signatures(
    fields: Mapping[str, str],
) -> tuple[list[_Signature], dict[str, Any], dict[str, Any]]:
    if "signature-input" not in fields or "signature" not in fields:
        raise _fail(
            "missing-signature",
            "the request is not signed: Signature-Input and Signature headers are required",
        )
    canonical = _canonical_inputs(fields["signature-input"])
    if canonical is None:
        inputs = _parse_dictionary("Signature-Input", fields["signature-input"])
        texts: dict[str, str] = {}
    else:
        inputs = {label: member for label, (member, _) in canonical.items()}
        texts = {label: text for label, (_, text) in canonical.items()}
    values = _canonical_bytes(fields["signature"])
    if values is None:
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
        signatures.append(
            _Signature(
                label, components, dict(member[1]), member, values.get(label), texts.get(label)
            )
        )
    return signatures, inputs, values


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


def _check_key(key: CachedKey, sig: _Signature, now: datetime) -> None:
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
    members: Any = _canonical_bytes(raw)
    if members is None:
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


def _authority(parts: URLParts) -> str:
    host, port = parts.host.lower(), parts.port
    if port and port.lstrip("0") == {"http": "80", "https": "443"}.get(parts.scheme.lower()):
        port = None
    return f"{host}:{port}" if port else host


#: The derived components :func:`_signature_base` builds, as the library's resolver does.
_DERIVED: dict[str, Callable[[str, URLParts], str]] = {
    "@method": lambda method, _: method,
    "@target-uri": lambda _, u: f"{u.scheme}://{u.authority}{u.path or '/'}{u.query_suffix}",
    "@authority": lambda _, u: _authority(u),
    "@scheme": lambda _, u: u.scheme.lower(),
    "@path": lambda _, u: u.path or "/",
    "@query": lambda _, u: "?" + (u.query or ""),
    "@request-target": lambda _, u: (u.path or "/") + u.query_suffix,
}
_PLAIN_COMPONENT = re.compile(r"@?[a-z0-9!#$%&'*+.^_`|~-]+")


def _signature_base(
    sig: _Signature, *, method: str, url: str, fields: Mapping[str, str]
) -> bytes | None:
    """The RFC 9421 signature base of ``sig``, built here for the common case (every covered
    component bare: the derived components above and whole header fields), or ``None`` when
    only the library builds it (component parameters, ``@query-param``, a field the request
    lacks, a value the library would refuse...). The library's resolver and signature-base
    builder cost more CPU than the rest of a signed request's check; a signature that does not
    match this base is checked by the library too, so a refusal is always the library's."""
    if method in ("OPTIONS", "CONNECT"):  # the library's special cases of the target URI
        return None
    try:
        parts = parse_url(url)
    except HTTPMessageSignaturesException:
        return None
    lines = []
    for component in sig.components:
        name = component.name
        if component.params or not _PLAIN_COMPONENT.fullmatch(name):
            return None
        if name[0] == "@":
            derive = _DERIVED.get(name)
            if derive is None:
                return None
            value = derive(method, parts)
            if not value.isprintable() or value != value.strip(" "):
                return None
        else:
            raw = fields.get(name)
            if raw is None:
                return None
            value = raw.strip(" \t")
            if not value.replace("\t", " ").isprintable():
                return None
        lines.append(f'"{name}": {value}')
    if len(lines) != len({c.name for c in sig.components}):  # a component named twice
        return None
    # As the library: re-serialised (canonical), not the member as the client sent it (which
    # is the same text when it arrived canonical).
    serialized = sig.serialized
    if serialized is None:
        serialized = http_sf.ser({sig.label: sig.input_member}).removeprefix(sig.label + "=")
    lines.append('"@signature-params": ' + serialized)
    base = "\n".join(lines)
    return base.encode("ascii") if base.isascii() else None


def _matches(key: CachedKey, signature: bytes, base: bytes) -> bool:
    if key.alg == "hmac-sha256":
        expected = hmac.new(key.material, base, hashlib.sha256).digest()
        return hmac.compare_digest(expected, signature)
    return ed25519_verify(key.material, signature, base)


def _check_signature(
    sig: _Signature,
    key: CachedKey,
    *,
    method: str,
    url: str,
    alternate_urls: Sequence[str],
    fields: Mapping[str, str],
) -> None:
    """Verify the signature against ``url`` or any of ``alternate_urls``, each also spelled
    with and without its scheme's default port: first against the base
    :func:`_signature_base` builds, then as the library builds it. The other spellings are
    only worked out when the URL as requested does not match (the common case does)."""
    signature = sig.value_member[0]

    def matches(candidate: str) -> bool:
        base = _signature_base(sig, method=method, url=candidate, fields=fields)
        return base is not None and _matches(key, signature, base)

    if matches(url):
        return
    urls = list(dict.fromkeys(v for u in (url, *alternate_urls) for v in _url_variants(u)))
    if any(matches(other) for other in urls[1:]):
        return
    # Only this label's members, so the library sees exactly one signature to verify.
    single = dict(fields)
    single["signature-input"] = http_sf.ser({sig.label: sig.input_member})
    single["signature"] = http_sf.ser({sig.label: sig.value_member})
    verifier = _Verifier(
        signature_algorithm=ALGORITHMS[key.alg],
        key_resolver=_KeyResolver(key.id, key.material),
    )
    problem = "the signature does not match the request"
    for candidate in urls:
        try:
            verifier.verify(_Message(method, candidate, single), max_age=None)
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


def _record_nonce_statement(insert: Any) -> Any:
    stmt = insert(_NONCES).values(
        key_id=bindparam("key_id"), nonce=bindparam("nonce"), expires_at=bindparam("expires_at")
    )
    return stmt.on_conflict_do_update(
        index_elements=[_NONCES.c.key_id, _NONCES.c.nonce],
        set_={"expires_at": stmt.excluded.expires_at},
        where=_NONCES.c.expires_at < bindparam("nonce_now"),
    ).returning(_NONCES.c.key_id)


_NONCES = cast("Table", RequestNonce.__table__)
_KEYS = cast("Table", ApiKey.__table__)
#: The statement on PostgreSQL, as text: on its own here, or in front of a request's first
#: statement (:func:`nonce_prelude`: a POST's Idempotency-Key claim, a balance read).
_RECORD_NONCE_SQL = (
    "INSERT INTO request_nonces (key_id, nonce, expires_at) VALUES (:key_id, :nonce, :expires_at)"
    " ON CONFLICT (key_id, nonce) DO UPDATE SET expires_at = excluded.expires_at"
    " WHERE request_nonces.expires_at < :nonce_now RETURNING key_id"
)
# Pre-built per dialect, on the table (not the ORM entity): building the statement on every
# request cost more than running it.
_RECORD_NONCE = {
    "postgresql": HotStatement(text(_RECORD_NONCE_SQL)),
    "sqlite": HotStatement(_record_nonce_statement(sqlite.insert)),
}


def _nonce_values(key_id: str, nonce: str, created: int, now: datetime) -> dict[str, Any]:
    """The nonce's row, kept while its signature verifies and a margin."""
    expires_at = datetime.fromtimestamp(created, tz=now.tzinfo) + WINDOW + NONCE_MARGIN
    return {"key_id": key_id, "nonce": nonce, "expires_at": expires_at}


def _record_nonce(session: Session, key_id: str, nonce: str, created: int, now: datetime) -> bool:
    """Remember ``nonce`` for the key; False if it is already remembered (a replay).

    One statement: INSERT ... ON CONFLICT DO UPDATE ... WHERE the old row has expired ...
    RETURNING. Two concurrent requests with the same nonce: PostgreSQL makes the second wait
    for the first's transaction, then finds the row (no row returned): exactly one succeeds.
    An expired row not yet purged is taken over, so only the window counts.
    """
    values = _nonce_values(key_id, nonce, created, now)
    stmt = _RECORD_NONCE.get(dialect_of(session))
    if stmt is None:  # another dialect: the primary key, inside a savepoint
        try:
            with session.begin_nested():
                session.execute(portable_insert(RequestNonce).values(**values))
        except IntegrityError:
            return False
        return True
    return stmt.first(session, {**values, "nonce_now": now}) is not None


def _printable(text: str) -> str:
    return text if _PRINTABLE_ID.fullmatch(text) else "(not shown)"


# --- the key cache -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CachedKey:
    """What verifying a signature needs of a key, with the HMAC secret already unsealed.

    A key's material, role, partner, scopes and expiry never change after it is created; only
    ``revoked_at`` does, which is why :class:`KeyCache` revalidates it.
    """

    id: str
    role: str
    partner_id: str | None
    alg: str
    scopes: frozenset[str]
    expires_at: datetime | None
    revoked_at: datetime | None
    material: bytes  # the unsealed HMAC secret, or the raw Ed25519 public key


_KEY_COLUMNS = select(
    ApiKey.id,
    ApiKey.role,
    ApiKey.partner_id,
    ApiKey.alg,
    ApiKey.scopes,
    ApiKey.secret_sealed,
    ApiKey.public_key,
    ApiKey.expires_at,
    ApiKey.revoked_at,
)
_KEY_REVOKED_AT = select(_KEYS.c.revoked_at).where(_KEYS.c.id == bindparam("key"))
_TOUCH_KEY = (
    update(_KEYS)
    .where(
        _KEYS.c.id == bindparam("key"),
        or_(_KEYS.c.last_used_at.is_(None), _KEYS.c.last_used_at < bindparam("due_before")),
    )
    .values(last_used_at=bindparam("now"))
)


class KeyCache:
    """The keys one process has seen, so that a signed request needs no database round trip
    (and no AES-GCM unseal) to verify its signature.

    Revocation is the one change a key can undergo. A cached key is revalidated (its
    ``revoked_at`` read again) at most :data:`REVALIDATE_S` seconds after it was last read, in
    the request's own transaction (:func:`record_use`), and a revocation made through this
    process forgets the key at once (:meth:`forget`): a revoked key is refused by every API
    process within a second. Why not LISTEN/NOTIFY: it needs a connection per process kept
    listening, and when that connection drops the cache would be stale without knowing it;
    a bounded age needs nothing to stay up, costs one indexed read per key and second, and the
    bound holds whatever fails. Bounded to :data:`MAX_KEYS` entries.
    """

    def __init__(
        self,
        secret_key: bytes,
        *,
        revalidate_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._secret_key = secret_key
        self._revalidate_s = revalidate_s
        self._monotonic = monotonic
        self._keys: dict[str, CachedKey] = {}
        self._read_at: dict[str, float] = {}
        self._touched_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def cached(self, key_ids: Iterable[str]) -> dict[str, CachedKey]:
        """The cached keys among ``key_ids`` (no database)."""
        keys = self._keys
        return {k: keys[k] for k in key_ids if k in keys}

    def load(self, session: Session, key_ids: Iterable[str]) -> dict[str, CachedKey]:
        """Read ``key_ids`` from the database into the cache; the ones that exist.

        A sealed HMAC secret that does not open under the service's key raises ValueError
        (a server misconfiguration, not the client's fault).
        """
        ids = sorted(set(key_ids))
        rows = session.execute(_KEY_COLUMNS.where(ApiKey.id.in_(ids))).all() if ids else []
        now = self._monotonic()
        found: dict[str, CachedKey] = {}
        for row in rows:
            if row.alg == "hmac-sha256":
                assert row.secret_sealed is not None
                material = unseal(self._secret_key, row.id, row.secret_sealed)
            else:
                assert row.public_key is not None
                material = row.public_key
            found[row.id] = CachedKey(
                id=row.id,
                role=row.role,
                partner_id=row.partner_id,
                alg=row.alg,
                scopes=frozenset(row.scopes.split()) if row.role == "partner" else frozenset(),
                expires_at=row.expires_at,
                revoked_at=row.revoked_at,
                material=material,
            )
        with self._lock:
            if len(self._keys) + len(found) > MAX_KEYS:
                self._keys.clear()
                self._read_at.clear()
            self._keys.update(found)
            self._read_at.update(dict.fromkeys(found, now))
        return found

    def forget(self, key_id: str) -> None:
        """Drop a key (it was revoked through this process): the next request reads it again."""
        with self._lock:
            self._keys.pop(key_id, None)
            self._read_at.pop(key_id, None)

    def revalidate(self, session: Session, key_id: str) -> None:
        """Read the key's ``revoked_at`` again if its cached copy is older than the bound;
        :class:`SignatureInvalid` (``revoked-key``) if it was revoked meanwhile."""
        now = self._monotonic()
        if now - self._read_at.get(key_id, float("-inf")) < self._revalidate_s:
            return
        revoked_at = session.scalar(_KEY_REVOKED_AT, {"key": key_id})
        key = self._keys.get(key_id)
        with self._lock:
            self._read_at[key_id] = now
            if key is not None and revoked_at is not None:
                self._keys[key_id] = replace(key, revoked_at=revoked_at)
        if revoked_at is not None:
            raise _fail("revoked-key", f"key {key_id} was revoked")

    def touch(self, session: Session, key_id: str, now: datetime) -> None:
        """``last_used_at = now``, at most once per :data:`LAST_USED_INTERVAL` per key and
        process (the conditional UPDATE settles races between processes)."""
        tick = self._monotonic()
        if tick - self._touched_at.get(key_id, float("-inf")) < LAST_USED_INTERVAL.total_seconds():
            return
        self._touched_at[key_id] = tick
        session.execute(
            _TOUCH_KEY, {"key": key_id, "now": now, "due_before": now - LAST_USED_INTERVAL}
        )


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request's signature fields, parsed once: what :meth:`KeyCache.load` must know (the
    key ids) and what :func:`verify_signature` checks."""

    fields: dict[str, str]
    signatures: list[_Signature]
    key_ids: set[str]
    #: The ``Signature-Input`` and ``Signature`` dictionaries as parsed (``http_sf``'s values).
    inputs: dict[str, Any]
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Verified:
    """A request whose signature verified: who signed it, and what :func:`record_use` writes."""

    principal: Principal
    nonce: str | None
    created: int
    now: datetime
    signed: SignedRequest


def parse_signed(headers: Mapping[str, str]) -> SignedRequest:
    """Parse the signature fields (:class:`SignatureInvalid` when missing or malformed)."""
    fields = _field_lines(headers)
    signatures, inputs, values = _parse_signatures(fields)
    return SignedRequest(fields, signatures, _key_ids(signatures), inputs, values)


def _key_ids(signatures: Sequence[_Signature]) -> set[str]:
    key_ids = {
        s.params["keyid"]
        for s in signatures
        if isinstance(s.params.get("keyid"), str) and len(s.params["keyid"]) <= 255
    }
    if not key_ids:
        raise _fail("malformed-signature", "the signature has no keyid parameter")
    return key_ids


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
    :data:`REASONS`; ``missing-component`` also names it in ``extra["component"]``). If several
    signatures are present, the first one that verifies wins; if none does, the failure of the
    first one whose ``keyid`` names a known key is reported.
    """
    assert now.tzinfo is not None, "now must be timezone-aware"
    fields = signed.fields
    candidates = [s for s in signed.signatures if s.params.get("keyid") in keys]
    if not candidates:
        shown = ", ".join(sorted(_printable(k) for k in signed.key_ids))
        raise _fail("unknown-key", f"no API key with id {shown}")
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
        _use_nonce(session, verified)
    cache.revalidate(session, key_id)
    cache.touch(session, key_id, verified.now)


def _use_nonce(session: Session, verified: Verified) -> None:
    assert verified.nonce is not None
    key_id = verified.principal.key_id
    if not _record_nonce(session, key_id, verified.nonce, verified.created, verified.now):
        _replayed_nonce(key_id)


def _replayed_nonce(key_id: str) -> None:
    raise _fail("replayed-nonce", f"nonce already used with key {key_id}")


def nonce_prelude(verified: Verified) -> Prelude | None:
    """The request's nonce (if it has one) as the write the request's first statement makes in
    its own round trip (a POST's Idempotency-Key claim, a balance read; ``replayed-nonce`` as
    :func:`record_use`)."""
    if verified.nonce is None:
        return None
    key_id = verified.principal.key_id
    values = _nonce_values(key_id, verified.nonce, verified.created, verified.now)

    def settle(_: Session, written: int) -> None:
        if not written:
            _replayed_nonce(key_id)

    return Prelude(
        _RECORD_NONCE_SQL,
        {**values, "nonce_now": verified.now},
        settle,
        partial(_use_nonce, verified=verified),
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


def purge_nonces(session: Session, now: datetime, batch: int = NONCE_PURGE_BATCH) -> int:
    """Delete up to ``batch`` remembered nonces whose window has passed; the number deleted
    (a scheduled job, which calls it until a batch comes back short)."""
    due = select(_NONCES.c.key_id, _NONCES.c.nonce).where(_NONCES.c.expires_at < now).limit(batch)
    result = session.execute(
        delete(_NONCES).where(tuple_(_NONCES.c.key_id, _NONCES.c.nonce).in_(due))
    )
    return int(getattr(result, "rowcount", 0))
