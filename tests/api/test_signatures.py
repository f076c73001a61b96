"""verify_request against the stock client (requests-http-signature, its defaults) and against
every check the contract names: each failure carries the reason the contract promises."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import http_sf
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from http_message_signatures import ContentDigest, HTTPMessageSigner, MappingKeyResolver
from requests.structures import CaseInsensitiveDict
from requests_http_signature import HTTPSignatureAuth, algorithms
from sqlalchemy import select

from coalition.db import transaction
from coalition.errors import SignatureInvalid
from partners.keys import b64url, b64url_decode, create_key, revoke_key
from partners.models import ApiKey, RequestNonce
from partners.signatures import (
    CachedKey,
    Principal,
    parse_signed,
    purge_nonces,
    verify_request,
)
from partners.signatures.base import matches, signature_base
from tests.conftest import Db

BASE = "http://api.coalition.test"
SECRET_KEY = b"k" * 32  # the Db fixture's COALITION_SECRET_KEY


@dataclass
class Key:
    """A key as a partner holds it: the id and what it signs with."""

    id: str
    alg: str
    material: bytes  # hmac: the decoded secret; ed25519: the PEM private key
    secret: str | None = None

    def auth(self, **options: Any) -> HTTPSignatureAuth:
        """The stock client, unchanged: only the documented constructor options."""
        algorithm = algorithms.HMAC_SHA256 if self.alg == "hmac-sha256" else algorithms.ED25519
        return HTTPSignatureAuth(
            signature_algorithm=algorithm, key=self.material, key_id=self.id, **options
        )


def make_key(
    db: Db,
    alg: str = "hmac-sha256",
    *,
    role: str = "partner",
    scopes: tuple[str, ...] = ("earn", "burn", "read"),
    expires_at: datetime | None = None,
) -> Key:
    partner_id = db.partner().id if role == "partner" else None
    private: Ed25519PrivateKey | None = None
    public: str | None = None
    if alg == "ed25519":
        private = Ed25519PrivateKey.generate()
        public = b64url(
            private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )
    with transaction(db.sessions) as s:
        new = create_key(
            s,
            secret_key=SECRET_KEY,
            role=role,
            partner_id=partner_id,
            alg=alg,
            scopes=list(scopes) if role == "partner" else [],
            public_key=public,
            expires_at=expires_at,
            now=db.clock(),
        )
    if private is not None:
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return Key(new.key.id, alg, pem)
    assert new.secret is not None
    return Key(new.key.id, alg, b64url_decode(new.secret), new.secret)


def prepared(
    method: str = "GET", path: str = "/v1/me", *, json: Any = None, base: str = BASE
) -> requests.PreparedRequest:
    return requests.Request(method, base + path, json=json).prepare()


def signed(
    key: Key,
    method: str = "GET",
    path: str = "/v1/me",
    *,
    json: Any = None,
    base: str = BASE,
    **options: Any,
) -> requests.PreparedRequest:
    request = prepared(method, path, json=json, base=base)
    result = key.auth(**options)(request)
    assert isinstance(result, requests.PreparedRequest)
    return result


def params_of(request: requests.PreparedRequest) -> dict[str, Any]:
    parsed = http_sf.parse(request.headers["Signature-Input"].encode(), tltype="dictionary")
    assert isinstance(parsed, dict)
    member = next(iter(parsed.values()))  # the first label
    assert isinstance(member, tuple)
    return dict(member[1])


def created_of(request: requests.PreparedRequest) -> datetime:
    return datetime.fromtimestamp(params_of(request)["created"], UTC)


def body_of(request: requests.PreparedRequest) -> bytes:
    body = request.body
    if body is None:
        return b""
    return body.encode() if isinstance(body, str) else bytes(body)


def verify(
    db: Db,
    request: requests.PreparedRequest,
    *,
    now: datetime | None = None,
    url: str | None = None,
    body: bytes | None = None,
    alternate_urls: tuple[str, ...] = (),
    secret_key: bytes = SECRET_KEY,
) -> Principal:
    """What the API does with a received request: method, URL, lower-cased headers, body."""
    assert request.method is not None and request.url is not None
    with transaction(db.sessions) as s:
        return verify_request(
            s,
            method=request.method,
            url=url or request.url,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body_of(request) if body is None else body,
            secret_key=secret_key,
            now=now or created_of(request) + timedelta(seconds=1),
            alternate_urls=alternate_urls,
        )


def refused(call: Callable[[], object], reason: str) -> SignatureInvalid:
    with pytest.raises(SignatureInvalid) as info:
        call()
    assert info.value.extra["reason"] == reason, info.value.detail
    return info.value


@pytest.fixture(params=["hmac-sha256", "ed25519"])
def key(request: pytest.FixtureRequest, db: Db) -> Key:
    return make_key(db, request.param)


# --- the stock client, unchanged --------------------------------------------------------------


def test_stock_client_defaults_are_what_we_expect(db: Db, key: Key) -> None:
    """What requests-http-signature signs by default: @method, @authority, @target-uri, the
    Date header it adds, and Content-Digest (it digests every buffered body, even an empty
    one); created, keyid and alg; no nonce, no expires."""
    request = signed(key, "POST", "/v1/earns", json={"member_id": "mem_1"})
    assert request.headers["Signature-Input"].startswith(
        'pyhms=("@method" "@authority" "@target-uri" "date" "content-digest");created='
    )
    assert set(params_of(request)) == {"created", "keyid", "alg"}
    assert params_of(request)["alg"] == key.alg
    assert request.headers["Content-Digest"].startswith("sha-256=:")


@pytest.mark.parametrize(
    ("method", "path", "json"),
    [
        ("GET", "/v1/me", None),
        ("GET", "/v1/transactions?member_id=mem_1&limit=10", None),
        ("POST", "/v1/earns", {"member_id": "mem_1", "reference": "r-1", "amount": "12.50"}),
        ("POST", "/v1/holds/hold_1/void", {}),
    ],
)
def test_stock_client_verifies(db: Db, key: Key, method: str, path: str, json: Any) -> None:
    principal = verify(db, signed(key, method, path, json=json))
    with transaction(db.sessions) as s:
        row = s.get(ApiKey, key.id)
        assert row is not None
    assert principal == Principal(
        key_id=key.id,
        role="partner",
        partner_id=row.partner_id,
        scopes=frozenset({"earn", "burn", "read"}),
    )


def test_stock_client_options_verify(db: Db, key: Key) -> None:
    """nonce, expires, no alg, another label: all still the stock client."""
    for options in (
        {"use_nonce": True},
        {"expires_in": timedelta(seconds=30)},
        {"include_alg": False},
        {"label": "sig1", "tag": "coalition"},
        {"covered_component_ids": ("@method", "@target-uri")},
    ):
        assert verify(db, signed(key, "POST", "/v1/burns", json={"points": 5}, **options))


@pytest.mark.parametrize(
    ("method", "path", "options"),
    [
        ("GET", "/v1/me", {}),
        ("GET", "/v1/transactions?member_id=mem_1&limit=10", {"use_nonce": True}),
        ("POST", "/v1/earns", {"expires_in": timedelta(seconds=30), "tag": "t"}),
        ("GET", "/v1/me", {"covered_component_ids": ("@method", "@path", "@query", "@authority")}),
        ("GET", "/v1/me?", {"covered_component_ids": ("@method", "@request-target", "@scheme")}),
    ],
)
def test_the_common_signature_base_is_built_without_the_library(
    key: Key, method: str, path: str, options: dict[str, Any]
) -> None:
    """What the stock client signs (bare derived components, whole header fields) is checked
    against the signature base :func:`signature_base` builds: it matches, byte for byte what
    the client signed; a changed request does not match it (and goes to the library)."""
    body = {"points": 5} if method == "POST" else None
    request = signed(key, method, path, json=body, base=BASE + ":80", **options)
    parsed = parse_signed(dict(request.headers))
    (sig,) = parsed.signatures
    fields = parsed.fields
    material = key.material if key.alg == "hmac-sha256" else _public_raw(key.material)
    cached = CachedKey(key.id, "partner", None, key.alg, frozenset(), None, None, material)
    url = str(request.url)
    base = signature_base(sig, method=method, url=url, fields=fields)
    assert base is not None
    assert matches(cached, sig.value_member[0], base)
    other = signature_base(sig, method=method, url=url.replace("/v1/", "/v2/"), fields=fields)
    assert other is not None
    assert not matches(cached, sig.value_member[0], other)


def _public_raw(pem: bytes) -> bytes:
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, Ed25519PrivateKey)
    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def test_operator_key_principal(db: Db) -> None:
    key = make_key(db, role="operator")
    principal = verify(db, signed(key, "GET", "/v1/admin/partners"))
    assert principal == Principal(key.id, "operator", None, frozenset())


def test_header_names_in_any_case(db: Db, key: Key) -> None:
    request = signed(key, "POST", "/v1/earns", json={"a": 1})
    assert request.method is not None and request.url is not None
    with transaction(db.sessions) as s:
        principal = verify_request(
            s,
            method=request.method,
            url=request.url,
            headers={k.upper(): v for k, v in request.headers.items()},
            body=body_of(request),
            secret_key=SECRET_KEY,
            now=created_of(request),
        )
    assert principal.key_id == key.id


# --- tampering ---------------------------------------------------------------------------------


def test_body_changed_after_signing(db: Db, key: Key) -> None:
    request = signed(key, "POST", "/v1/earns", json={"amount": "1.00"})
    refused(lambda: verify(db, request, body=b'{"amount":"1000.00"}'), "digest-mismatch")
    refused(lambda: verify(db, request, body=b""), "digest-mismatch")


def test_digest_changed_with_the_body(db: Db, key: Key) -> None:
    """A consistent new body and digest: the signature covers the digest, so it fails."""
    request = signed(key, "POST", "/v1/earns", json={"amount": "1.00"})
    other = prepared("POST", "/v1/earns", json={"amount": "999.00"})
    key.auth()(other)
    request.headers["Content-Digest"] = other.headers["Content-Digest"]
    refused(lambda: verify(db, request, body=body_of(other)), "bad-signature")


def test_path_changed(db: Db, key: Key) -> None:
    request = signed(key, "GET", "/v1/transactions/txn_1")
    error = refused(
        lambda: verify(db, request, url=BASE + "/v1/transactions/txn_2"), "bad-signature"
    )
    assert request.headers["Signature"].split(":")[1] not in error.detail


def test_query_changed_or_added(db: Db, key: Key) -> None:
    request = signed(key, "GET", "/v1/transactions?member_id=mem_1")
    refused(
        lambda: verify(db, request, url=BASE + "/v1/transactions?member_id=mem_2"), "bad-signature"
    )
    plain = signed(key, "GET", "/v1/transactions")
    refused(lambda: verify(db, plain, url=BASE + "/v1/transactions?limit=500"), "bad-signature")


def test_method_changed(db: Db, key: Key) -> None:
    request = signed(key, "POST", "/v1/holds/hold_1/void", json={})
    request.method = "PUT"
    refused(lambda: verify(db, request), "bad-signature")


def test_covered_header_changed(db: Db, key: Key) -> None:
    request = signed(key, "GET", "/v1/me")
    request.headers["Date"] = "Mon, 01 Jan 2029 00:00:00 GMT"
    refused(lambda: verify(db, request), "bad-signature")


def test_covered_header_removed(db: Db, key: Key) -> None:
    request = signed(key, "GET", "/v1/me")
    del request.headers["Date"]
    error = refused(lambda: verify(db, request), "bad-signature")
    assert '"date"' in error.detail


def test_uncovered_header_added_or_changed(db: Db, key: Key) -> None:
    """Only covered components are protected: headers outside the signature may differ (the
    API must not trust them for anything that matters)."""
    request = signed(key, "POST", "/v1/earns", json={"a": 1})
    request.headers["X-Extra"] = "added after signing"
    request.headers["Content-Type"] = "text/plain"
    assert verify(db, request).key_id == key.id


def test_signature_value_altered(db: Db, key: Key) -> None:
    request = signed(key, "GET", "/v1/me")
    label, _, value = request.headers["Signature"].partition("=")
    raw = bytearray(base64.b64decode(value.strip(":")))
    raw[0] ^= 1
    request.headers["Signature"] = f"{label}=:{base64.b64encode(bytes(raw)).decode()}:"
    refused(lambda: verify(db, request), "bad-signature")


def test_signed_with_another_key(db: Db) -> None:
    key = make_key(db)
    impostor = Key(key.id, key.alg, b"x" * 32)
    refused(lambda: verify(db, signed(impostor)), "bad-signature")


# --- replay --------------------------------------------------------------------------------------


def test_replayed_nonce(db: Db, key: Key) -> None:
    request = signed(key, "POST", "/v1/earns", json={"a": 1}, use_nonce=True)
    verify(db, request)
    error = refused(lambda: verify(db, request), "replayed-nonce")
    assert params_of(request)["nonce"] not in error.detail
    # the same nonce is the key's own: another key may use it
    other = make_key(db, key.alg)

    class SameNonce(HTTPSignatureAuth):
        def get_nonce(self, request: requests.PreparedRequest) -> str | None:
            return str(params_of_signed["nonce"])

    params_of_signed = params_of(request)
    again = prepared("POST", "/v1/earns", json={"a": 1})
    algorithm = algorithms.HMAC_SHA256 if other.alg == "hmac-sha256" else algorithms.ED25519
    SameNonce(signature_algorithm=algorithm, key=other.material, key_id=other.id)(again)
    assert verify(db, again).key_id == other.id


def test_without_nonce_a_request_may_repeat_within_the_window(db: Db, key: Key) -> None:
    """The stock client's default has no nonce: replay protection is then the window alone
    (and, for POST, the Idempotency-Key)."""
    request = signed(key, "GET", "/v1/me")
    assert verify(db, request) == verify(db, request)


class FixedAuth(HTTPSignatureAuth):
    """The stock client with its documented hooks pinned: a given created and nonce."""

    created: datetime
    nonce: str

    def get_created(self, request: requests.PreparedRequest) -> datetime:
        self.add_date(request, timestamp=int(self.created.timestamp()))
        return self.created

    def get_nonce(self, request: requests.PreparedRequest) -> str | None:
        return self.nonce


def fixed(key: Key, created: datetime, nonce: str) -> requests.PreparedRequest:
    algorithm = algorithms.HMAC_SHA256 if key.alg == "hmac-sha256" else algorithms.ED25519
    auth = FixedAuth(signature_algorithm=algorithm, key=key.material, key_id=key.id)
    auth.created, auth.nonce = created, nonce
    request = prepared("POST", "/v1/earns", json={"a": 1})
    auth(request)
    return request


def test_nonce_is_free_again_once_its_window_has_passed(db: Db) -> None:
    key = make_key(db)
    t0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    verify(db, fixed(key, t0, "n-1"), now=t0)
    refused(
        lambda: verify(db, fixed(key, t0 + timedelta(seconds=30), "n-1"), now=t0), "replayed-nonce"
    )
    # until created + 300 s (+ a margin for clocks between processes) the nonce is remembered
    later = t0 + timedelta(seconds=299)
    refused(lambda: verify(db, fixed(key, later, "n-1"), now=later), "replayed-nonce")
    with transaction(db.sessions) as s:
        assert purge_nonces(s, t0 + timedelta(seconds=300)) == 0
    after = t0 + timedelta(seconds=361)
    assert verify(db, fixed(key, after, "n-1"), now=after).key_id == key.id  # taken over
    with transaction(db.sessions) as s:
        assert purge_nonces(s, after + timedelta(seconds=361)) == 1
        assert s.scalars(select(RequestNonce)).all() == []


def test_purge_nonces_keeps_live_ones(db: Db) -> None:
    key = make_key(db)
    t0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    for i in range(3):
        at = t0 + timedelta(seconds=100 * i)
        verify(db, fixed(key, at, f"n-{i}"), now=at)
    with transaction(db.sessions) as s:
        assert purge_nonces(s, t0 + timedelta(seconds=361 + 100)) == 2
        assert [n.nonce for n in s.scalars(select(RequestNonce))] == ["n-2"]


def test_concurrent_identical_nonces_exactly_one_succeeds(pg: Db) -> None:
    key = make_key(pg)
    request = signed(key, "POST", "/v1/earns", json={"a": 1}, use_nonce=True)
    assert request.method is not None and request.url is not None
    n = 8
    barrier = threading.Barrier(n)
    results: list[object] = []
    lock = threading.Lock()

    def attempt() -> None:
        outcome: object
        try:
            with transaction(pg.sessions) as s:
                barrier.wait()
                outcome = verify_request(
                    s,
                    method=str(request.method),
                    url=str(request.url),
                    headers={k.lower(): v for k, v in request.headers.items()},
                    body=body_of(request),
                    secret_key=SECRET_KEY,
                    now=created_of(request),
                )
                threading.Event().wait(0.2)  # hold the transaction open: the others must wait
        except SignatureInvalid as e:
            outcome = e.extra["reason"]
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=attempt) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(str, results)).count("replayed-nonce") == n - 1
    assert sum(isinstance(r, Principal) for r in results) == 1


# --- the clock ---------------------------------------------------------------------------------


def test_created_window(db: Db, key: Key) -> None:
    request = signed(key, "GET", "/v1/me")
    created = created_of(request)
    assert verify(db, request, now=created + timedelta(seconds=300))
    assert verify(db, request, now=created - timedelta(seconds=300))
    refused(lambda: verify(db, request, now=created + timedelta(seconds=301)), "stale")
    refused(lambda: verify(db, request, now=created - timedelta(seconds=301)), "future")


def test_expires_enforced(db: Db, key: Key) -> None:
    request = signed(key, "GET", "/v1/me", expires_in=timedelta(seconds=10))
    created = created_of(request)
    assert verify(db, request, now=created + timedelta(seconds=10))
    refused(lambda: verify(db, request, now=created + timedelta(seconds=11)), "expired-signature")


def test_created_required(db: Db) -> None:
    key = make_key(db)
    request = prepared("GET", "/v1/me")
    request.headers["Signature-Input"] = f'sig=("@method" "@target-uri");keyid="{key.id}"'
    request.headers["Signature"] = "sig=:AAAA:"
    error = refused(lambda: verify(db, request, now=datetime.now(UTC)), "malformed-signature")
    assert "created" in error.detail


# --- keys ----------------------------------------------------------------------------------------


def test_alg_mismatch(db: Db) -> None:
    ed = make_key(db, "ed25519")
    hmac_key = make_key(db, "hmac-sha256")
    as_hmac = Key(ed.id, "hmac-sha256", b"s" * 32)
    refused(lambda: verify(db, signed(as_hmac)), "alg-mismatch")
    # an ed25519 signature naming an hmac key
    as_ed = Key(hmac_key.id, "ed25519", ed.material)
    refused(lambda: verify(db, signed(as_ed)), "alg-mismatch")
    # without alg the key decides the algorithm, and the signature fails
    refused(lambda: verify(db, signed(as_ed, include_alg=False)), "bad-signature")


def test_unknown_key(db: Db) -> None:
    stranger = Key("key_NOPE", "hmac-sha256", b"s" * 32)
    error = refused(lambda: verify(db, signed(stranger)), "unknown-key")
    assert "key_NOPE" in error.detail


def test_revoked_key(db: Db, key: Key) -> None:
    request = signed(key, "GET", "/v1/me")
    verify(db, request)
    with transaction(db.sessions) as s:
        revoke_key(s, key.id, db.clock())
    refused(lambda: verify(db, request), "revoked-key")


def test_expired_key(db: Db) -> None:
    expires_at = db.clock() + timedelta(days=1)
    key = make_key(db, expires_at=expires_at)
    before = expires_at - timedelta(seconds=1)
    assert verify(db, fixed(key, before, "n-1"), now=before).key_id == key.id
    refused(lambda: verify(db, fixed(key, expires_at, "n-2"), now=expires_at), "expired-key")
    refused(lambda: verify(db, signed(key, "GET", "/v1/me")), "expired-key")


def test_secret_key_that_did_not_seal_it_is_a_server_error(db: Db) -> None:
    key = make_key(db)
    with pytest.raises(ValueError, match="COALITION_SECRET_KEY"):
        verify(db, signed(key), secret_key=b"w" * 32)


# --- headers and coverage ------------------------------------------------------------------------


def test_missing_signature_headers(db: Db, key: Key) -> None:
    request = signed(key, "GET", "/v1/me")
    del request.headers["Signature"]
    refused(lambda: verify(db, request), "missing-signature")
    refused(lambda: verify(db, prepared(), now=datetime.now(UTC)), "missing-signature")


@pytest.mark.parametrize(
    ("signature_input", "signature"),
    [
        ("sig=(@method);created=1", "sig=:AAAA:"),  # not a structured dictionary
        ('sig=("@method")', "sig=AAAA"),  # signature not a byte sequence
        ('sig="@method";keyid="{key}";created={now}', "sig=:AAAA:"),  # not an inner list
        ('sig=("@method");keyid="{key}";created={now};color="red"', "sig=:AAAA:"),
        ('sig=("@method");keyid="{key}";created="{now}"', "sig=:AAAA:"),
        ('sig=("@method");keyid="{key}";created={now}', "other=:AAAA:"),
        ('sig=("@method");created={now}', "sig=:AAAA:"),  # no keyid
        ('sig=(method);keyid="{key}";created={now}', "sig=:AAAA:"),  # a token component
        ('sig=("@method");keyid="{key}";created={now};created=1', "sig=:AAAA:"),  # twice
        (
            ", ".join(f's{i}=("@method");keyid="{{key}}";created={{now}}' for i in range(9)),
            ", ".join(f"s{i}=:AAAA:" for i in range(9)),
        ),  # too many signatures
    ],
)
def test_malformed_signature(db: Db, signature_input: str, signature: str) -> None:
    key = make_key(db)
    now = datetime.now(UTC)
    request = prepared("GET", "/v1/me")
    request.headers["Signature-Input"] = signature_input.format(
        key=key.id, now=int(now.timestamp())
    )
    request.headers["Signature"] = signature
    refused(lambda: verify(db, request, now=now), "malformed-signature")


class _AnyDigest(ContentDigest):
    """A client that also sends digests the service does not support (md5, sha-384)."""

    _hashers: ClassVar = {**ContentDigest._hashers, "md5": hashlib.md5, "sha-384": hashlib.sha384}


class _Signer(HTTPMessageSigner):
    content_digest_class = _AnyDigest


def sign_with(
    key: Key,
    request: requests.PreparedRequest,
    components: tuple[str, ...],
    *,
    body: bytes | None = None,
    nonce: str | None = None,
) -> requests.PreparedRequest:
    """The library's own signer, with an explicit component list (no automatic additions)."""
    algorithm = algorithms.HMAC_SHA256 if key.alg == "hmac-sha256" else algorithms.ED25519
    private: Any = key.material
    if key.alg == "ed25519":
        private = serialization.load_pem_private_key(key.material, password=None)
    signer = _Signer(
        signature_algorithm=algorithm,
        key_resolver=MappingKeyResolver(private_keys={key.id: private}, public_keys={}),
    )
    signer.sign(
        request,
        key_id=key.id,
        created=datetime.now(UTC),
        nonce=nonce,
        covered_component_ids=components,
        body=body,
        use_existing_digest="Content-Digest" in request.headers,
    )
    return request


def test_body_without_content_digest_component(db: Db, key: Key) -> None:
    request = prepared("POST", "/v1/earns", json={"a": 1})
    sign_with(key, request, ("@method", "@target-uri"))
    error = refused(lambda: verify(db, request), "missing-component")
    assert error.extra["component"] == '"content-digest"'
    assert "content-digest" in error.detail


def test_body_without_content_digest_header(db: Db, key: Key) -> None:
    request = prepared("POST", "/v1/earns", json={"a": 1})
    sign_with(key, request, ("@method", "@target-uri", "content-digest"), body=body_of(request))
    del request.headers["Content-Digest"]
    refused(lambda: verify(db, request), "digest-missing")


def test_empty_body_needs_no_digest(db: Db, key: Key) -> None:
    request = sign_with(key, prepared("GET", "/v1/me"), ("@method", "@target-uri"))
    assert "Content-Digest" not in request.headers
    assert verify(db, request).key_id == key.id


@pytest.mark.parametrize(
    ("components", "missing"),
    [
        (("@target-uri",), '"@method"'),
        (("@method", "@authority"), '"@path"'),
        (("@method", "@path"), '"@authority"'),
        (("@method",), '"@target-uri"'),
        (("@method", "@authority", "@path"), '"@query"'),
        (("@method", "@request-target"), '"@target-uri"'),
    ],
)
def test_required_components(db: Db, key: Key, components: tuple[str, ...], missing: str) -> None:
    request = sign_with(key, prepared("GET", "/v1/transactions?limit=5"), components)
    error = refused(lambda: verify(db, request), "missing-component")
    assert error.extra["component"] == missing


def test_authority_path_query_form(db: Db, key: Key) -> None:
    with_query = prepared("GET", "/v1/transactions?member_id=mem_1&limit=5")
    sign_with(key, with_query, ("@method", "@authority", "@path", "@query"))
    assert verify(db, with_query).key_id == key.id
    refused(lambda: verify(db, with_query, url=BASE + "/v1/transactions?limit=6"), "bad-signature")
    without_query = prepared("POST", "/v1/earns", json={"a": 1})
    sign_with(key, without_query, ("@method", "@authority", "@path"), body=body_of(without_query))
    assert verify(db, without_query).key_id == key.id


def test_content_digest_sha512_and_several(db: Db, key: Key) -> None:
    request = prepared("POST", "/v1/earns", json={"a": 1})
    body = body_of(request)

    def member(name: str, data: bytes) -> str:
        return f"{name}=:{base64.b64encode(data).decode()}:"

    sha256 = member("sha-256", hashlib.sha256(body).digest())
    sha512 = member("sha-512", hashlib.sha512(body).digest())
    md5 = member("md5", hashlib.md5(b"whatever").digest())
    for digest in (sha512, f"{sha256}, {sha512}", f"{sha512}, {md5}"):
        r = prepared("POST", "/v1/earns", json={"a": 1})
        r.headers["Content-Digest"] = digest
        sign_with(key, r, ("@method", "@target-uri", "content-digest"), body=None)
        assert verify(db, r).key_id == key.id, digest
    # each supported one present must match, covered or not
    wrong512 = member("sha-512", hashlib.sha512(b"other").digest())
    r = prepared("POST", "/v1/earns", json={"a": 1})
    r.headers["Content-Digest"] = f"{sha256}, {wrong512}"
    sign_with(key, r, ("@method", "@target-uri", '"content-digest";key="sha-256"'))
    refused(lambda: verify(db, r), "digest-mismatch")
    # a digest we do not support is no digest
    r = prepared("POST", "/v1/earns", json={"a": 1})
    r.headers["Content-Digest"] = member("sha-384", hashlib.sha384(body).digest())
    sign_with(key, r, ("@method", "@target-uri", "content-digest"))
    refused(lambda: verify(db, r), "digest-missing")


def test_several_signatures_one_verifies(db: Db, key: Key) -> None:
    """Any label; the first signature that verifies wins; unknown keys are skipped."""
    request = signed(key, "GET", "/v1/me", label="mine")
    stranger = Key("key_OTHER", "hmac-sha256", b"s" * 32)
    stranger.auth(label="theirs", append_if_signature_exists=True, use_existing_digest=True)(
        request
    )
    assert "theirs=" in request.headers["Signature-Input"]
    assert verify(db, request).key_id == key.id
    # a failing signature with a known key, then a good one
    bad = Key(key.id, key.alg, b"x" * 32 if key.alg == "hmac-sha256" else other_pem())
    request = signed(bad, "GET", "/v1/me", label="a")
    key.auth(label="b", append_if_signature_exists=True, use_existing_digest=True)(request)
    assert verify(db, request).key_id == key.id
    # none verifies: the first known key's failure is reported
    request = signed(bad, "GET", "/v1/me", label="a")
    stranger.auth(label="c", append_if_signature_exists=True, use_existing_digest=True)(request)
    refused(lambda: verify(db, request), "bad-signature")


def other_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# --- URLs ----------------------------------------------------------------------------------------


def test_alternate_urls_behind_a_proxy(db: Db, key: Key) -> None:
    request = signed(key, "POST", "/v1/earns?x=1", json={"a": 1}, base="https://api.example.com")
    internal = "http://10.0.0.5:8000/v1/earns?x=1"
    refused(lambda: verify(db, request, url=internal), "bad-signature")
    assert verify(
        db, request, url=internal, alternate_urls=("https://api.example.com/v1/earns?x=1",)
    )


def test_default_port_spelled_or_not(db: Db, key: Key) -> None:
    with_port = signed(key, "GET", "/v1/me", base="http://api.example.com:80")
    assert with_port.url == "http://api.example.com:80/v1/me"
    assert verify(db, with_port, url="http://api.example.com/v1/me")
    without = signed(key, "GET", "/v1/me", base="https://api.example.com")
    assert verify(db, without, url="https://api.example.com:443/v1/me")
    refused(lambda: verify(db, without, url="https://api.example.com:8443/v1/me"), "bad-signature")


# --- last_used_at --------------------------------------------------------------------------------


def test_last_used_at_set_and_throttled(db: Db) -> None:
    key = make_key(db)
    t0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

    def last_used() -> datetime | None:
        with transaction(db.sessions) as s:
            row = s.get(ApiKey, key.id)
            assert row is not None
            return row.last_used_at

    assert last_used() is None
    for seconds, expected in ((0, 0), (30, 0), (60, 0), (61, 61), (100, 61), (122, 122)):
        at = t0 + timedelta(seconds=seconds)
        verify(db, fixed(key, at, f"n-{seconds}"), now=at)
        assert last_used() == t0 + timedelta(seconds=expected), seconds
    # a refused request does not count as use
    refused(
        lambda: verify(db, fixed(key, t0, "n-0"), now=t0 + timedelta(seconds=200)), "replayed-nonce"
    )
    assert last_used() == t0 + timedelta(seconds=122)


def test_failure_details_hold_no_secrets(db: Db) -> None:
    key = make_key(db)
    assert key.secret is not None
    request = signed(key, "POST", "/v1/earns", json={"a": 1}, use_nonce=True)
    signature = request.headers["Signature"].split("=", 1)[1]
    errors = [
        refused(lambda: verify(db, request, body=b"{}"), "digest-mismatch"),
        refused(lambda: verify(db, request, url=BASE + "/v1/burns"), "bad-signature"),
        refused(lambda: verify(db, request, now=created_of(request) + timedelta(hours=1)), "stale"),
    ]
    for error in errors:
        text = f"{error.detail} {error.extra}"
        assert key.secret not in text and signature not in text and signature.strip(":") not in text


# --- the shell recipes in docs/signing.md ---------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "signing.md"
FAKE_CURL = """#!/bin/sh
# records its arguments (NUL separated) instead of sending anything
printf '%s\\0' "$@" > "$CURL_ARGS"
"""


def recipe(name: str) -> str:
    match = re.search(rf"<!-- recipe: {name} -->\n```sh\n(.*?)```", DOCS.read_text(), re.S)
    assert match, f"docs/signing.md has no recipe {name}"
    return match.group(1)


def run_recipe(name: str, tmp_path: Path, env: dict[str, str]) -> requests.PreparedRequest:
    """Run a recipe with bash and a curl that records its arguments; the request it built."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    curl = bin_dir / "curl"
    curl.write_text(FAKE_CURL)
    curl.chmod(0o755)
    args_file = tmp_path / "curl-args"
    subprocess.run(
        ["bash", "-c", recipe(name)],
        cwd=tmp_path,
        env={
            **env,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "CURL_ARGS": str(args_file),
        },
        check=True,
        timeout=30,
    )
    args = args_file.read_bytes().split(b"\0")[:-1]
    method, url, headers, body = "GET", "", {}, None
    i = 0
    while i < len(args):
        arg = args[i].decode()
        if arg == "-X":
            method, i = args[i + 1].decode(), i + 1
        elif arg == "-H":
            name_, _, value = args[i + 1].decode().partition(": ")
            headers[name_] = value
            i += 1
        elif arg == "--data-binary":
            data = args[i + 1].decode()
            body = (tmp_path / data[1:]).read_bytes() if data.startswith("@") else data.encode()
            i += 1
        elif not arg.startswith("-"):
            url = arg
        i += 1
    request = requests.Request(method, url).prepare()
    request.headers = CaseInsensitiveDict(headers)
    request.body = body
    return request


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_shell_recipe_hmac_post(db: Db, tmp_path: Path) -> None:
    key = make_key(db, "hmac-sha256")
    assert key.secret is not None
    env = {"BASE": "http://127.0.0.1:8000", "KEY_ID": key.id, "SECRET": key.secret}
    request = run_recipe("hmac-post", tmp_path, env)
    assert request.url == "http://127.0.0.1:8000/v1/earns"
    assert request.method == "POST" and "Idempotency-Key" in request.headers
    assert verify(db, request, now=datetime.now(UTC)).key_id == key.id
    refused(lambda: verify(db, request, now=datetime.now(UTC)), "replayed-nonce")
    request.body = body_of(request).replace(b"12.50", b"99.50")
    refused(lambda: verify(db, request, now=datetime.now(UTC)), "digest-mismatch")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_shell_recipe_ed25519_get(db: Db, tmp_path: Path) -> None:
    key = make_key(db, "ed25519")
    (tmp_path / "partner-ed25519.pem").write_bytes(key.material)
    env = {"BASE": "http://127.0.0.1:8000", "KEY_ID": key.id, "KEY_PEM": "partner-ed25519.pem"}
    request = run_recipe("ed25519-get", tmp_path, env)
    assert request.url == "http://127.0.0.1:8000/v1/transactions?member_id=mem_1&limit=10"
    assert verify(db, request, now=datetime.now(UTC)).key_id == key.id
    refused(
        lambda: verify(
            db,
            request,
            now=datetime.now(UTC),
            url="http://127.0.0.1:8000/v1/transactions?member_id=mem_2&limit=10",
        ),
        "bad-signature",
    )


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_shell_public_key_recipe(db: Db, tmp_path: Path) -> None:
    """The doc's openssl line gives the base64url raw public key create_key takes."""
    match = re.search(r"```sh\n(openssl genpkey.*?)```", DOCS.read_text(), re.S)
    assert match
    out = subprocess.run(
        ["bash", "-c", match.group(1)], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.strip()
    private = serialization.load_pem_private_key(
        (tmp_path / "partner-ed25519.pem").read_bytes(), password=None
    )
    assert isinstance(private, Ed25519PrivateKey)
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert out == b64url(raw)
