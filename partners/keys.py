"""API keys: creation, sealing of HMAC secrets (AES-GCM), revocation, lookup.

An HMAC secret is 32 random bytes, shown once (base64url, no padding) and stored only sealed:
AES-256-GCM under ``COALITION_SECRET_KEY`` with a random 96-bit nonce and the key id as
associated data, so a sealed secret cannot be moved to another key's row.

An Ed25519 public key is checked with libsodium (PyNaCl) when it is registered: it must be the
canonical encoding of a point of the prime-order group, so the small-order points (the all-zero
key among them), mixed-order points and non-canonical encodings that would let anyone forge a
signature are refused. Signatures are verified by libsodium too (:func:`ed25519_verify`), which
refuses small-order keys and ``R`` values and non-canonical ``S`` on its own.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.bindings import crypto_core_ed25519_is_valid_point
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from sqlalchemy import select, update
from sqlalchemy.orm import Session, defer

from coalition.errors import NotFound, ValidationFailed
from coalition.ids import new_id
from partners.models import KEY_ALGS, KEY_ROLES, PARTNER_SCOPES, ApiKey, Partner

NONCE_BYTES = 12
SECRET_BYTES = 32
ED25519_KEY_BYTES = 32
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def b64url(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding; ValueError on anything else (another
    alphabet, white space, NUL or any character outside base64url: none is skipped) and on a
    non-canonical encoding (a last character whose spare bits are not zero: RFC 4648 3.5), so
    that one value has exactly one text and a changed character never decodes the same."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text):
        raise ValueError("not base64url")
    unpadded = text.rstrip("=")
    try:
        raw = base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), altchars=b"-_", validate=True)
    except binascii.Error:
        raise ValueError("not base64url") from None
    if b64url(raw) != unpadded:
        raise ValueError("not canonical base64url")
    return raw


def ed25519_public_key(text: str | None) -> bytes:
    """The raw key of a base64url Ed25519 public key, checked by libsodium; ValidationFailed at
    ``$.public_key`` unless it is 32 bytes encoding a point of the prime-order group canonically
    (small-order and mixed-order points and non-canonical encodings are refused)."""
    try:
        raw = b64url_decode(text or "")
    except ValueError:
        raw = b""
    if len(raw) != ED25519_KEY_BYTES:
        raise ValidationFailed.at("public_key", "a raw 32-byte Ed25519 public key, base64url")
    if not crypto_core_ed25519_is_valid_point(raw):
        raise ValidationFailed.at(
            "public_key",
            "not a usable Ed25519 public key (a small-order or non-canonical point)",
        )
    return raw


def ed25519_verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """libsodium's strict Ed25519 verification (``crypto_sign_open``): False for a wrong
    signature, a small-order key or ``R``, a non-canonical ``S`` or a signature of another
    length."""
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def seal(secret_key: bytes, key_id: str, plaintext: bytes) -> bytes:
    """AES-GCM seal: nonce || ciphertext+tag, bound to ``key_id``."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(secret_key).encrypt(nonce, plaintext, key_id.encode())


def unseal(secret_key: bytes, key_id: str, sealed: bytes) -> bytes:
    """Open a sealed secret; ValueError if it was sealed under another key or altered."""
    try:
        return AESGCM(secret_key).decrypt(
            sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], key_id.encode()
        )
    except InvalidTag:
        raise ValueError("sealed secret does not open with COALITION_SECRET_KEY") from None


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key as created: the HMAC secret (base64url) appears here and nowhere else, ever."""

    key: ApiKey
    secret: str | None


def create_key(
    session: Session,
    *,
    secret_key: bytes,
    role: str,
    partner_id: str | None,
    alg: str,
    scopes: list[str],
    public_key: str | None,
    expires_at: datetime | None,
    now: datetime,
) -> NewKey:
    """Create an API key. HMAC: the service makes the secret. Ed25519: the partner's public key.

    Partner keys carry scopes (a non-empty set from :data:`PARTNER_SCOPES`); operator and
    finance keys carry none (their role decides what they may do). NotFound for an unknown
    partner.
    """
    if role not in KEY_ROLES:
        raise ValidationFailed.at("role", f"one of {', '.join(KEY_ROLES)}")
    if alg not in KEY_ALGS:
        raise ValidationFailed.at("alg", f"one of {', '.join(KEY_ALGS)}")
    if role == "partner":
        bad = [s for s in scopes if s not in PARTNER_SCOPES]
        if bad or not scopes or len(set(scopes)) != len(scopes):
            raise ValidationFailed.at(
                "scopes", f"a non-empty list of distinct scopes from {', '.join(PARTNER_SCOPES)}"
            )
        if partner_id is None or session.get(Partner, partner_id) is None:
            raise NotFound(f"no partner {partner_id}")
    else:
        if scopes:
            raise ValidationFailed.at("scopes", f"{role} keys carry no scopes")
        if partner_id is not None:
            raise ValidationFailed.at("partner_id", f"{role} keys belong to no partner")
    if expires_at is not None and expires_at <= now:
        raise ValidationFailed.at("expires_at", "must be in the future")
    key_id = new_id("key")
    secret: str | None = None
    sealed: bytes | None = None
    raw_public: bytes | None = None
    if alg == "hmac-sha256":
        if public_key is not None:
            raise ValidationFailed.at("public_key", "only for ed25519 keys")
        raw = secrets.token_bytes(SECRET_BYTES)
        secret, sealed = b64url(raw), seal(secret_key, key_id, raw)
    else:
        raw_public = ed25519_public_key(public_key)
    key = ApiKey(
        id=key_id,
        role=role,
        partner_id=partner_id,
        alg=alg,
        scopes=" ".join(scopes),
        secret_sealed=sealed,
        public_key=raw_public,
        created_at=now,
        expires_at=expires_at,
        revoked_at=None,
        last_used_at=None,
    )
    session.add(key)
    session.flush()
    return NewKey(key, secret)


def create_operator_key(session: Session, *, secret_key: bytes, now: datetime) -> NewKey:
    """A new operator key (HMAC, no expiry): :func:`create_key` with what an operator's
    key always is (``coalition init``, the demo)."""
    return create_key(
        session,
        secret_key=secret_key,
        role="operator",
        partner_id=None,
        alg="hmac-sha256",
        scopes=[],
        public_key=None,
        expires_at=None,
        now=now,
    )


def has_operator_key(session: Session) -> bool:
    """True once any operator key exists (``coalition init`` creates the first)."""
    return session.scalar(select(ApiKey.id).where(ApiKey.role == "operator").limit(1)) is not None


def _without_secret() -> Any:
    """Load option: the sealed secret is not loaded, and touching it raises."""
    return defer(ApiKey.secret_sealed, raiseload=True)


def get_key(session: Session, key_id: str) -> ApiKey:
    """One key (its sealed secret not loaded); NotFound if there is no such key."""
    key = session.get(ApiKey, key_id, options=[_without_secret()])
    if key is None:
        raise NotFound(f"no key {key_id}")
    return key


def list_keys(session: Session, partner_id: str) -> list[ApiKey]:
    """A partner's keys, oldest first, revoked and expired ones included (their timestamps say
    so); sealed secrets are not loaded. NotFound for an unknown partner."""
    if session.get(Partner, partner_id) is None:
        raise NotFound(f"no partner {partner_id}")
    return list(
        session.scalars(
            select(ApiKey)
            .where(ApiKey.partner_id == partner_id)
            .options(_without_secret())
            .order_by(ApiKey.created_at, ApiKey.id)
        )
    )


def revoke_key(session: Session, key_id: str, now: datetime) -> ApiKey:
    """Revoke a key from ``now`` on: its signatures are refused (``revoked-key``). Revoking a
    revoked key changes nothing (the first ``revoked_at`` stays). NotFound if unknown."""
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    key = session.scalars(
        select(ApiKey)
        .where(ApiKey.id == key_id)
        .options(_without_secret())
        .execution_options(populate_existing=True)
    ).one_or_none()
    if key is None:
        raise NotFound(f"no key {key_id}")
    return key
