"""The partner client: what it sends (captured by a requests adapter, no network) verifies with
verify_request; POSTs carry an Idempotency-Key that retries reuse; problems raise ProblemError."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import http_sf
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from api.client import ApiResponse, CoalitionClient, ProblemError
from coalition.db import transaction
from coalition.errors import SignatureInvalid
from partners.keys import b64url, create_key
from partners.signatures import Principal, verify_request
from tests.conftest import Db

BASE = "http://coalition.test:8000"
SECRET_KEY = b"k" * 32

Answer = Callable[[requests.PreparedRequest], requests.Response] | Exception


def answer(
    status: int = 200, body: Any = None, *, content_type: str = "application/json", **headers: str
) -> Callable[[requests.PreparedRequest], requests.Response]:
    def make(request: requests.PreparedRequest) -> requests.Response:
        response = requests.Response()
        response.status_code = status
        response.reason = "Whatever"
        response._content = b"" if body is None else json.dumps(body).encode()
        response.headers = CaseInsensitiveDict({"Content-Type": content_type, **headers})
        response.request = request
        response.url = str(request.url)
        return response

    return make


def problem(status: int, code: str, detail: str = "") -> Answer:
    doc = {"type": f"/problems/{code}", "title": code, "status": status, "detail": detail}
    return answer(status, doc, content_type="application/problem+json")


class Recorder(BaseAdapter):
    """A transport that records every prepared request and plays back scripted answers."""

    def __init__(self, *answers: Answer) -> None:
        super().__init__()
        self.answers = list(answers)
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        self.sent.append(request.copy())
        next_answer = self.answers.pop(0) if self.answers else answer(200, {"ok": True})
        if isinstance(next_answer, Exception):
            raise next_answer
        return next_answer(request)

    def close(self) -> None:
        pass


def client_for(
    db: Db, alg: str, *answers: Answer, retries: int = 3, base: str = BASE
) -> tuple[CoalitionClient, Recorder, str]:
    partner = db.partner()
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
            role="partner",
            partner_id=partner.id,
            alg=alg,
            scopes=["earn", "burn", "read"],
            public_key=public if alg == "ed25519" else None,
            expires_at=None,
            now=db.clock(),
        )
    recorder = Recorder(*answers)
    session = requests.Session()
    session.mount("http://", recorder)
    session.mount("https://", recorder)
    material: Any = private if alg == "ed25519" else new.secret
    client = CoalitionClient(
        base, new.key.id, material, session=session, retries=retries, backoff=0
    )
    return client, recorder, new.key.id


def body_of(request: requests.PreparedRequest) -> bytes:
    body = request.body
    if body is None:
        return b""
    return body.encode() if isinstance(body, str) else bytes(body)


def signature_params(request: requests.PreparedRequest) -> tuple[list[str], dict[str, Any]]:
    parsed = http_sf.parse(request.headers["Signature-Input"].encode(), tltype="dictionary")
    assert isinstance(parsed, dict)
    member: Any = parsed["sig1"]
    items, params = member
    return [item[0] for item in items], dict(params)


def verify(db: Db, request: requests.PreparedRequest, now: datetime | None = None) -> Principal:
    assert request.method is not None and request.url is not None
    created = datetime.fromtimestamp(signature_params(request)[1]["created"], UTC)
    with transaction(db.sessions) as s:
        return verify_request(
            s,
            method=request.method,
            url=request.url,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body_of(request),
            secret_key=SECRET_KEY,
            now=now or created,
        )


@pytest.fixture(params=["hmac-sha256", "ed25519"])
def alg(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_client_requests_verify(db: Db, alg: str) -> None:
    client, recorder, key_id = client_for(db, alg)
    client.me()
    client.earn("mem_1", "order-1", "12.50", "EUR", datetime(2026, 1, 5, 9, tzinfo=UTC))
    client.list_transactions(member_id="mem_1", limit=10, since=datetime(2026, 1, 1, tzinfo=UTC))
    client.void("hold_1")
    assert len(recorder.sent) == 4
    for request in recorder.sent:
        principal = verify(db, request)
        assert principal.key_id == key_id and principal.role == "partner"
        assert principal.scopes == {"earn", "burn", "read"}
    get, post = recorder.sent[0], recorder.sent[1]
    components, params = signature_params(get)
    assert components == ["@method", "@target-uri"]
    assert set(params) == {"created", "keyid", "alg", "nonce"} and params["alg"] == alg
    assert "Content-Digest" not in get.headers and "Idempotency-Key" not in get.headers
    components, params = signature_params(post)
    assert components == ["@method", "@target-uri", "content-digest"]
    assert post.headers["Content-Digest"].startswith("sha-256=:")
    assert post.headers["Content-Type"] == "application/json"
    assert 1 <= len(post.headers["Idempotency-Key"]) <= 255
    assert json.loads(body_of(post)) == {
        "member_id": "mem_1",
        "reference": "order-1",
        "amount": "12.50",
        "currency": "EUR",
        "occurred_at": "2026-01-05T09:00:00Z",
    }
    assert recorder.sent[2].url == (
        BASE + "/v1/transactions?member_id=mem_1&since=2026-01-01T00%3A00%3A00Z&limit=10"
    )


def test_each_request_has_its_own_nonce(db: Db) -> None:
    client, recorder, _ = client_for(db, "hmac-sha256")
    for _ in range(3):
        client.me()
    nonces = {signature_params(r)[1]["nonce"] for r in recorder.sent}
    assert len(nonces) == 3
    for request in recorder.sent:
        verify(db, request)
    with pytest.raises(SignatureInvalid) as info:
        verify(db, recorder.sent[0])
    assert info.value.extra["reason"] == "replayed-nonce"


def test_tampered_client_request_is_refused(lite: Db) -> None:
    client, recorder, _ = client_for(lite, "ed25519")
    client.burn("mem_1", "r-1", points=10)
    request = recorder.sent[0]
    request.body = body_of(request).replace(b"10", b"99")
    with pytest.raises(SignatureInvalid) as info:
        verify(lite, request)
    assert info.value.extra["reason"] == "digest-mismatch"


def test_base_url_with_a_path_prefix(lite: Db) -> None:
    client, recorder, _ = client_for(lite, "hmac-sha256", base="https://gw.example.com/coalition/")
    client.balance("mem/odd id")
    request = recorder.sent[0]
    assert request.url == "https://gw.example.com/coalition/v1/members/mem%2Fodd%20id/balance"
    verify(lite, request)


def test_helpers_send_the_contract_requests(lite: Db) -> None:
    client, recorder, _ = client_for(lite, "hmac-sha256")
    calls: list[tuple[Callable[[], ApiResponse], str, str, Any]] = [
        (client.me, "GET", "/v1/me", None),
        (client.create_member, "POST", "/v1/members", {}),
        (lambda: client.create_member("mem_X"), "POST", "/v1/members", {"member_id": "mem_X"}),
        (lambda: client.balance("mem_1"), "GET", "/v1/members/mem_1/balance", None),
        (
            lambda: client.burn("mem_1", "r", amount="5.00", currency="EUR", basket_amount="20"),
            "POST",
            "/v1/burns",
            {
                "member_id": "mem_1",
                "reference": "r",
                "amount": "5.00",
                "currency": "EUR",
                "basket_amount": "20",
            },
        ),
        (
            lambda: client.hold("mem_1", "r", 50, expires_in=60),
            "POST",
            "/v1/holds",
            {"member_id": "mem_1", "reference": "r", "points": 50, "expires_in": 60},
        ),
        (lambda: client.get_hold("hold_1"), "GET", "/v1/holds/hold_1", None),
        (lambda: client.capture("hold_1"), "POST", "/v1/holds/hold_1/capture", {}),
        (lambda: client.capture("hold_1", 7), "POST", "/v1/holds/hold_1/capture", {"points": 7}),
        (lambda: client.void("hold_1"), "POST", "/v1/holds/hold_1/void", {}),
        (
            lambda: client.reverse("txn_1", "r-rev", 3),
            "POST",
            "/v1/transactions/txn_1/reversals",
            {"reference": "r-rev", "points": 3},
        ),
        (lambda: client.get_transaction("txn_1"), "GET", "/v1/transactions/txn_1", None),
    ]
    for call, method, path, body in calls:
        assert call().data == {"ok": True}
        request = recorder.sent[-1]
        assert (request.method, request.url) == (method, BASE + path)
        assert (json.loads(body_of(request)) if request.body else None) == body


def test_iter_transactions_follows_cursors(lite: Db) -> None:
    client, recorder, _ = client_for(
        lite,
        "hmac-sha256",
        answer(200, {"data": [{"id": "txn_1"}], "has_more": True, "next_cursor": "c1"}),
        answer(200, {"data": [{"id": "txn_2"}], "has_more": False, "next_cursor": None}),
    )
    assert [t["id"] for t in client.iter_transactions(member_id="mem_1")] == ["txn_1", "txn_2"]
    assert recorder.sent[1].url == BASE + "/v1/transactions?member_id=mem_1&cursor=c1"


def test_response_status_and_replay_flag(lite: Db) -> None:
    client, _, _ = client_for(
        lite, "hmac-sha256", answer(201, {"member_id": "mem_1"}, **{"Idempotent-Replayed": "true"})
    )
    response = client.create_member()
    assert (response.status, response.data, response.replayed) == (
        201,
        {"member_id": "mem_1"},
        True,
    )


# --- retries -------------------------------------------------------------------------------------


def test_retry_after_connection_error_reuses_the_idempotency_key(db: Db, alg: str) -> None:
    client, recorder, _ = client_for(
        db, alg, requests.ConnectionError("reset"), requests.Timeout("slow"), answer(201, {"id": 1})
    )
    assert client.earn("mem_1", "order-9", "3.00", "EUR").status == 201
    assert len(recorder.sent) == 3
    keys = {r.headers["Idempotency-Key"] for r in recorder.sent}
    nonces = {signature_params(r)[1]["nonce"] for r in recorder.sent}
    assert len(keys) == 1 and len(nonces) == 3  # same operation, each attempt signed afresh
    for request in recorder.sent:  # every attempt verifies (no replayed nonce)
        verify(db, request)


def test_given_idempotency_key_is_used(lite: Db) -> None:
    client, recorder, _ = client_for(lite, "hmac-sha256")
    client.earn("mem_1", "order-9", "3.00", "EUR", idempotency_key="my-key-1")
    assert recorder.sent[0].headers["Idempotency-Key"] == "my-key-1"
    client.request("POST", "/v1/members", {})
    client.request("POST", "/v1/members", {})
    assert len({r.headers["Idempotency-Key"] for r in recorder.sent}) == 3


def test_retry_on_5xx_and_key_in_use(lite: Db) -> None:
    client, recorder, _ = client_for(
        lite,
        "hmac-sha256",
        problem(503, "unavailable"),
        problem(409, "idempotency-key-in-use"),
        answer(500, None, content_type="text/html"),
        answer(201, {"id": "txn_1"}),
    )
    assert client.burn("mem_1", "r", points=1).data == {"id": "txn_1"}
    assert len(recorder.sent) == 4
    assert len({r.headers["Idempotency-Key"] for r in recorder.sent}) == 1


def test_retries_are_bounded(lite: Db) -> None:
    client, recorder, _ = client_for(lite, "hmac-sha256", *[problem(503, "unavailable")] * 10)
    with pytest.raises(ProblemError) as info:
        client.me()
    assert info.value.status == 503 and info.value.code == "unavailable"
    assert len(recorder.sent) == 4  # 1 + retries=3
    client, recorder, _ = client_for(
        lite, "hmac-sha256", *[requests.ConnectionError()] * 5, retries=1
    )
    with pytest.raises(requests.ConnectionError):
        client.me()
    assert len(recorder.sent) == 2


def test_no_retry_on_other_errors(lite: Db) -> None:
    client, recorder, _ = client_for(
        lite,
        "hmac-sha256",
        problem(409, "insufficient-points", "member has 5 points"),
        problem(500, "internal"),
    )
    with pytest.raises(ProblemError) as info:
        client.burn("mem_1", "r", points=100)
    assert info.value.status == 409 and info.value.code == "insufficient-points"
    assert info.value.detail == "member has 5 points"
    assert info.value.problem["type"] == "/problems/insufficient-points"
    assert len(recorder.sent) == 1
    with pytest.raises(ProblemError):  # PATCH is not idempotent: no retry on a 5xx
        client.request("PATCH", "/v1/webhook-endpoints/we_1", {"disabled": True})
    assert len(recorder.sent) == 2


def test_non_problem_error_body(lite: Db) -> None:
    client, _, _ = client_for(lite, "hmac-sha256", answer(404, None, content_type="text/plain"))
    with pytest.raises(ProblemError) as info:
        client.get_hold("hold_nope")
    assert info.value.status == 404 and info.value.problem["status"] == 404


def test_key_material_is_checked() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        CoalitionClient(BASE, "key_1", "c2hvcnQ")
    with pytest.raises(ValueError, match="base64url"):
        CoalitionClient(BASE, "key_1", "a+b/" * 11)
    with pytest.raises(ValueError, match="does not match"):
        CoalitionClient(BASE, "key_1", Ed25519PrivateKey.generate(), alg="hmac-sha256")
    with pytest.raises(ValueError, match="required"):
        CoalitionClient(BASE, "key_1")
    assert CoalitionClient(BASE, "key_1", b"s" * 32).alg == "hmac-sha256"


def test_signature_is_fresh(lite: Db) -> None:
    client, recorder, _ = client_for(lite, "hmac-sha256")
    before = datetime.now(UTC) - timedelta(seconds=1)
    client.me()
    created = datetime.fromtimestamp(signature_params(recorder.sent[0])[1]["created"], UTC)
    assert before <= created <= datetime.now(UTC)
    verify(lite, recorder.sent[0], now=datetime.now(UTC))
