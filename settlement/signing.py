"""The operator's statement-signing keys (Ed25519): creation, rotation, signing, publishing.

A key's private half is stored sealed like the HMAC secrets of API keys
(:func:`partners.keys.seal`: AES-256-GCM under ``COALITION_SECRET_KEY``, bound to the kid).
The key with the highest ``generation`` signs; rotating adds a new one and keeps the old
public keys published (``GET /v1/signing-keys``), so every statement stays verifiable.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from partners.keys import seal, unseal
from settlement.models import SigningKey


def kid_of(public_key: bytes) -> str:
    """A key's id: ``sk_`` and the first 24 hex digits of the SHA-256 of its raw public key."""
    return "sk_" + hashlib.sha256(public_key).hexdigest()[:24]


def _raw_public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def _raw_private(private: Ed25519PrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def rotate(session: Session, *, secret_key: bytes, now: datetime) -> SigningKey:
    """Make a new signing key the one that signs; the old ones stay published."""
    generation = session.scalar(select(func.coalesce(func.max(SigningKey.generation), 0)))
    private = Ed25519PrivateKey.generate()
    public = _raw_public(private)
    kid = kid_of(public)
    key = SigningKey(
        kid=kid,
        generation=int(generation or 0) + 1,
        public_key=public,
        private_sealed=seal(secret_key, kid, _raw_private(private)),
        created_at=now,
    )
    session.add(key)
    session.flush()
    return key


def ensure_key(session: Session, *, secret_key: bytes, now: datetime) -> SigningKey | None:
    """Create the first signing key when there is none (``coalition init``); the new key, or
    ``None`` when one existed."""
    if session.scalar(select(SigningKey.kid).limit(1)) is not None:
        return None
    return rotate(session, secret_key=secret_key, now=now)


@dataclass(frozen=True, slots=True)
class Signer:
    """The key that signs now, opened for this use only."""

    kid: str
    private: Ed25519PrivateKey

    def sign(self, data: bytes) -> bytes:
        """The Ed25519 signature of ``data``."""
        return self.private.sign(data)


def signer(session: Session, *, secret_key: bytes, now: datetime) -> Signer:
    """The current signing key (created first if there is none)."""
    key = session.scalars(
        select(SigningKey).order_by(SigningKey.generation.desc()).limit(1)
    ).one_or_none()
    if key is None:
        key = rotate(session, secret_key=secret_key, now=now)
    raw = unseal(secret_key, key.kid, key.private_sealed)
    return Signer(key.kid, Ed25519PrivateKey.from_private_bytes(raw))


def public_keys(session: Session) -> list[SigningKey]:
    """Every signing key, newest first (only their public halves are meant to leave)."""
    return list(session.scalars(select(SigningKey).order_by(SigningKey.generation.desc())))
