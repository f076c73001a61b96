"""Ed25519 keys are refused when degenerate and signatures are verified strictly (libsodium):
a small-order public key would let anyone "sign" without a private key."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from http_message_signatures.algorithms import HTTPSignatureAlgorithm
from requests_http_signature import HTTPSignatureAuth

from coalition.db import transaction
from coalition.errors import SignatureInvalid, ValidationFailed
from coalition.ids import new_id
from partners.keys import b64url, create_key, ed25519_public_key, ed25519_verify
from partners.models import ApiKey
from partners.signatures import verify_request
from tests.conftest import Db

P_MINUS = bytes.fromhex("ff" * 30)
#: Encodings libsodium refuses: the small-order points (orders 1, 2, 4, 8), non-canonical
#: encodings (y >= p, "negative zero" x), each a key anyone could forge signatures for.
DEGENERATE = {
    "zero (order 4)": bytes(32),
    "identity (order 1)": b"\x01" + bytes(31),
    "order 8": bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    "order 8 (other)": bytes.fromhex(
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"
    ),
    "p - 1 (order 2)": b"\xec" + P_MINUS + b"\x7f",
    "p, non-canonical zero": b"\xed" + P_MINUS + b"\x7f",
    "p + 1, non-canonical identity": b"\xee" + P_MINUS + b"\x7f",
    "negative zero x": b"\x01" + bytes(30) + b"\x80",
}
#: R = the identity, S = 0: "verifies" under a small-order key for 1 message in 4 or 8.
FORGED_SIGNATURE = b"\x01" + bytes(63)


def _create(db: Db, public_key: str) -> None:
    partner = db.partner()
    with transaction(db.sessions) as s:
        create_key(
            s,
            secret_key=b"k" * 32,
            role="partner",
            partner_id=partner.id,
            alg="ed25519",
            scopes=["read"],
            public_key=public_key,
            expires_at=None,
            now=db.clock(),
        )


@pytest.mark.parametrize("raw", DEGENERATE.values(), ids=DEGENERATE.keys())
def test_a_degenerate_ed25519_public_key_is_refused_at_registration(db: Db, raw: bytes) -> None:
    with pytest.raises(ValidationFailed) as info:
        _create(db, b64url(raw))
    assert info.value.errors[0]["path"] == "public_key"


@pytest.mark.parametrize(
    "text",
    ["A" * 43 + "\x00", "A" * 42 + "\nA", " " + "A" * 43, "A" * 43 + "\n", "A+" + "A" * 41],
)
def test_a_public_key_with_characters_outside_base64url_is_refused(db: Db, text: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        ed25519_public_key(text)
    assert info.value.errors[0]["path"] == "public_key"


def test_a_real_ed25519_public_key_is_accepted(db: Db) -> None:
    raw = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    assert ed25519_public_key(b64url(raw)) == raw
    _create(db, b64url(raw))


@pytest.mark.parametrize("raw", DEGENERATE.values(), ids=DEGENERATE.keys())
def test_strict_verification_refuses_forgeries_under_small_order_keys(raw: bytes) -> None:
    for n in range(64):
        assert not ed25519_verify(raw, FORGED_SIGNATURE, f"message {n}".encode())


class _Forger(HTTPSignatureAlgorithm):
    """Signs every request with the same bytes, no private key at all."""

    algorithm_id = "ed25519"

    def __init__(self, public_key: Any = None, private_key: Any = None) -> None:
        pass

    def sign(self, message: bytes) -> bytes:
        return FORGED_SIGNATURE


def test_a_small_order_key_already_stored_signs_nothing(db: Db) -> None:
    """A key that predates the registration check (stored directly) still verifies nothing:
    40 forged requests, about a quarter of which a lax verifier accepts, are all refused."""
    partner = db.partner()
    key_id = new_id("key")
    with transaction(db.sessions) as s:
        s.add(
            ApiKey(
                id=key_id,
                role="partner",
                partner_id=partner.id,
                alg="ed25519",
                scopes="read",
                secret_sealed=None,
                public_key=bytes(32),
                created_at=db.clock(),
                expires_at=None,
                revoked_at=None,
                last_used_at=None,
            )
        )
    auth = HTTPSignatureAuth(signature_algorithm=_Forger, key=b"", key_id=key_id)
    for n in range(40):
        request = auth(requests.Request("GET", f"http://api.coalition.test/v1/me?n={n}").prepare())
        assert request.url is not None
        with transaction(db.sessions) as s, pytest.raises(SignatureInvalid) as info:
            verify_request(
                s,
                method="GET",
                url=request.url,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=b"",
                secret_key=b"k" * 32,
                now=datetime.now(UTC),
            )
        assert info.value.extra["reason"] == "bad-signature"
