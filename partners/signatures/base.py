"""The RFC 9421 signature base, and the check of a signature against it.

The ``http-message-signatures`` library is the reference: its component resolver and
signature-base builder decide every case. They cost more CPU than the rest of a signed
request's check, so the common case (every covered component bare: the derived components
below and whole header fields) is built here by :func:`signature_base`, and a signature that
does not match that base is checked by the library too (:func:`check_signature`): every
refusal is the library's. tests/partners/test_signature_base.py checks that what is built
here is, byte for byte, what the library builds.

The library's URL splitter is private (``http_message_signatures._url``), so the target URI
is split here by :func:`split_url`, a strict subset of the same RFC 3986 grammar (no
user info, fragment or IP literal: those go to the library), tested against the library's
public component resolver.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from http_message_signatures import (
    HTTPMessageSignaturesException,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
)
from http_message_signatures.algorithms import HMAC_SHA256, HTTPSignatureAlgorithm

from coalition.errors import invariant
from partners.keys import ed25519_verify
from partners.signatures.fields import Signature
from partners.signatures.keycache import CachedKey
from partners.signatures.refusals import fail

# RFC 3986 sections 2 and 3, as the library reads them; each repeated alternative consumes
# one allowed character or one percent escape.
_CHARS = r"A-Za-z0-9._~\-!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_URL = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://"
    rf"(?P<host>(?:[{_CHARS}]|{_PCT})+)"
    r"(?::(?P<port>[0-9]*))?"
    rf"(?P<path>/(?:[{_CHARS}:@/]|{_PCT})*)?"
    rf"(?:\?(?P<query>(?:[{_CHARS}:@/?]|{_PCT})*))?"
)
_DEFAULT_PORTS = {"http": "80", "https": "443"}


@dataclass(frozen=True, slots=True)
class UrlParts:
    """A target URI's parts with their spelling as sent: an absent path is ``""``, an absent
    port or query ``None`` (distinct from an empty one)."""

    scheme: str
    host: str
    port: str | None
    path: str
    query: str | None

    @property
    def authority(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def query_suffix(self) -> str:
        return "" if self.query is None else "?" + self.query

    def normalized_authority(self) -> str:
        """``@authority``: the host lower-cased, the scheme's default port left out."""
        host, port = self.host.lower(), self.port
        if port and port.lstrip("0") == _DEFAULT_PORTS.get(self.scheme.lower()):
            port = None
        return f"{host}:{port}" if port else host


def split_url(url: str) -> UrlParts | None:
    """The parts of an absolute, encoded URL with a host name or IPv4 address, or ``None``
    for anything else (user info, a fragment, an IP literal, a character RFC 3986 does not
    allow unencoded): nothing is repaired, decoded, lower-cased or defaulted."""
    match = _URL.fullmatch(url)
    if match is None:
        return None
    return UrlParts(
        match["scheme"], match["host"], match["port"], match["path"] or "", match["query"]
    )


#: The derived components :func:`signature_base` builds, as the library's resolver does.
_DERIVED: dict[str, Callable[[str, UrlParts], str]] = {
    "@method": lambda method, _: method,
    "@target-uri": lambda _, u: f"{u.scheme}://{u.authority}{u.path or '/'}{u.query_suffix}",
    "@authority": lambda _, u: u.normalized_authority(),
    "@scheme": lambda _, u: u.scheme.lower(),
    "@path": lambda _, u: u.path or "/",
    "@query": lambda _, u: "?" + (u.query or ""),
    "@request-target": lambda _, u: (u.path or "/") + u.query_suffix,
}
_PLAIN_COMPONENT = re.compile(r"@?[a-z0-9!#$%&'*+.^_`|~-]+")


def signature_base(
    sig: Signature, *, method: str, url: str, fields: Mapping[str, str]
) -> bytes | None:
    """The signature base of ``sig`` for the common case (every covered component bare: the
    derived components above and whole header fields), or ``None`` when only the library
    builds it (component parameters, ``@query-param``, a field the request lacks, a value the
    library would refuse...)."""
    if method in ("OPTIONS", "CONNECT"):  # the library's special cases of the target URI
        return None
    parts = split_url(url)
    if parts is None:
        return None
    lines = []
    for component in sig.components:
        value = _component_value(component.name, component.bare, method, parts, fields)
        if value is None:
            return None
        lines.append(f'"{component.name}": {value}')
    if len(lines) != len({c.name for c in sig.components}):  # a component named twice
        return None
    lines.append('"@signature-params": ' + sig.params_text())
    base = "\n".join(lines)
    return base.encode("ascii") if base.isascii() else None


def _component_value(
    name: str, bare: bool, method: str, parts: UrlParts, fields: Mapping[str, str]
) -> str | None:
    if not bare or not _PLAIN_COMPONENT.fullmatch(name):
        return None
    if name[0] == "@":
        derive = _DERIVED.get(name)
        if derive is None:
            return None
        value = derive(method, parts)
        return value if value.isprintable() and value == value.strip(" ") else None
    raw = fields.get(name)
    if raw is None:
        return None
    value = raw.strip(" \t")
    return value if value.replace("\t", " ").isprintable() else None


def url_variants(url: str) -> list[str]:
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


def matches(key: CachedKey, signature: bytes, base: bytes) -> bool:
    """Whether ``signature`` is ``key``'s signature of ``base``."""
    if key.alg == "hmac-sha256":
        expected = hmac.new(key.material, base, hashlib.sha256).digest()
        return hmac.compare_digest(expected, signature)
    return ed25519_verify(key.material, signature, base)


def check_signature(
    sig: Signature,
    key: CachedKey,
    *,
    method: str,
    url: str,
    alternate_urls: Sequence[str],
    fields: Mapping[str, str],
) -> None:
    """Verify the signature against ``url`` or any of ``alternate_urls``, each also spelled
    with and without its scheme's default port: first against the base
    :func:`signature_base` builds, then as the library builds it (``bad-signature`` when
    none matches). The other spellings are only worked out when the URL as requested does not
    match (the common case does)."""
    signature = sig.value_member[0]

    def built_matches(candidate: str) -> bool:
        base = signature_base(sig, method=method, url=candidate, fields=fields)
        return base is not None and matches(key, signature, base)

    if built_matches(url):
        return
    urls = list(dict.fromkeys(v for u in (url, *alternate_urls) for v in url_variants(u)))
    if any(built_matches(other) for other in urls[1:]):
        return
    problem = _library_verifies(sig, key, method=method, urls=urls, fields=fields)
    if problem is None:
        return
    raise fail(
        "bad-signature",
        f"signature {sig.label!r}: {problem} (method, target URI, covered headers and "
        "parameters must be exactly what was signed, with this key)",
    )


def _library_verifies(
    sig: Signature, key: CachedKey, *, method: str, urls: Sequence[str], fields: Mapping[str, str]
) -> str | None:
    """``None`` when the library verifies ``sig`` against one of ``urls``; else why not."""
    # Only this label's members, so the library sees exactly one signature to verify.
    single = dict(fields)
    single["signature-input"], single["signature"] = sig.alone()
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
        return None
    return problem


# --- the library's verifier, as this service uses it ------------------------------------------
class _StrictEd25519(HTTPSignatureAlgorithm):
    """Ed25519 verified by libsodium (:func:`partners.keys.ed25519_verify`), not by the
    library's default, which accepts signatures made "with" a small-order public key."""

    algorithm_id = "ed25519"

    def __init__(self, public_key: bytes | None = None, private_key: None = None) -> None:
        invariant(isinstance(public_key, bytes), "Ed25519: verification with the raw public key")
        self.public_key = public_key or b""

    def verify(self, signature: bytes, message: bytes) -> None:
        if not ed25519_verify(self.public_key, signature, message):
            raise CryptoInvalidSignature


ALGORITHMS: dict[str, type[HTTPSignatureAlgorithm]] = {
    "hmac-sha256": HMAC_SHA256,
    "ed25519": _StrictEd25519,
}


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
    are checked by the policy against the caller's ``now`` (one clock, testable)."""

    require_created = True

    def validate_created_and_expires(self, sig_input: Any, max_age: Any = None) -> None:
        return None
