"""What signs a delivery, per Standard Webhooks: an endpoint's secrets and the signature.

A secret is ``whsec_`` and the base64 of 32 random bytes (the Standard Webhooks format), shown
once when created or rotated and stored only sealed (AES-GCM under ``COALITION_SECRET_KEY``,
bound to the endpoint id, as API key secrets are). After a rotation the previous secret keeps
signing alongside the new one for :data:`ROTATION_OVERLAP`.

``webhook-signature`` is ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` with each
secret that signs now (two during a rotation), space separated (:func:`signature`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from partners.keys import unseal
from partners.webhooks.tables import WebhookEndpoint

SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)
SECRET_BYTES = 32
ROTATION_OVERLAP = timedelta(hours=24)


def new_secret() -> tuple[str, bytes]:
    """A secret as shown (``whsec_...``) and its raw bytes."""
    raw = secrets.token_bytes(SECRET_BYTES)
    return SECRET_PREFIX + base64.b64encode(raw).decode(), raw


def signing_secrets(endpoint: WebhookEndpoint, secret_key: bytes, now: datetime) -> list[bytes]:
    """The raw secrets that sign a delivery now: the current one, and the previous one during
    its overlap."""
    found = [unseal(secret_key, endpoint.id, endpoint.secret_sealed)]
    if (
        endpoint.previous_secret_sealed is not None
        and endpoint.previous_expires_at is not None
        and now < endpoint.previous_expires_at
    ):
        found.append(unseal(secret_key, endpoint.id, endpoint.previous_secret_sealed))
    return found


def sign(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One Standard Webhooks signature: ``v1,<base64 HMAC-SHA256>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature(secrets_now: tuple[bytes, ...], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one signature per secret that signs now."""
    return " ".join(sign(s, msg_id, timestamp, body) for s in secrets_now)
