"""Logs of ``coalition serve``: one JSON object per line, each line of a request carrying its
request id (and key id and partner once known); client text is escaped (no forged lines, no
raw NUL bytes); a client that goes away is an info line; no secret, signature or body."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest

from tests.api.conftest import ok, unique
from tests.api.serving import Served, serve_process


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve_process(tmp_path_factory.mktemp("logs"))


def _request_id() -> str:
    return f"test-{uuid.uuid4().hex}"


def test_every_line_is_json_and_a_signed_request_is_found_by_its_id(served: Served) -> None:
    rid = _request_id()
    response = served.client(served.operator).get(
        "/v1/admin/partners", headers={"X-Request-Id": rid}
    )
    ok(response)
    assert response.headers["X-Request-Id"] == rid
    line = served.line_of(rid)
    assert line["level"] == "info" and line["logger"] == "coalition.api.requests"
    assert line["key_id"] == served.operator.key_id
    assert line["route"] == "/v1/admin/partners" and line["method"] == "GET"
    assert line["status"] == 200 and line["duration_ms"] >= 0
    assert all({"ts", "level", "logger", "message"} <= doc.keys() for doc in served.lines())


def test_an_unacceptable_request_id_is_replaced_by_one_of_the_service(served: Served) -> None:
    response = served.client().get("/v1/health/live", headers={"X-Request-Id": "a b\tc"})
    assert response.status_code == 200
    made = response.headers["X-Request-Id"]
    assert made.startswith("req_")
    assert served.line_of(made)["route"] == "/v1/health/live"


def test_text_from_the_client_cannot_forge_a_log_line(served: Served) -> None:
    rid = _request_id()
    response = served.client().get(
        "/v1/transactions/txn_%00%0AERROR%20-%20FORGED-LINE", headers={"X-Request-Id": rid}
    )
    assert response.status_code == 401
    line = served.line_of(rid)
    assert line["path"] == "/v1/transactions/txn_\x00\nERROR - FORGED-LINE"
    raw = served.log_path.read_text()
    assert not any(text.startswith("ERROR - FORGED-LINE") for text in raw.splitlines())


def test_a_client_that_disconnects_mid_body_is_an_info_line(served: Served) -> None:
    host, port = served.base_url.removeprefix("http://").split(":")
    rid = _request_id()
    head = (
        "POST /v1/earns HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: 60000\r\n"
        f"X-Request-Id: {rid}\r\n\r\n{{"
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
    line = served.line_of(rid)
    assert line["status"] == 499
    mine = [doc for doc in served.lines() if doc.get("request_id") == rid]
    assert {doc["level"] for doc in mine} == {"info"}, mine
    assert not any("exc" in doc for doc in mine)
    assert any("client disconnected" in doc["message"] for doc in mine)


def test_no_secret_signature_or_body_is_logged(served: Served) -> None:
    rid = _request_id()
    name = unique("secret-partner-name")
    client = served.client(served.operator)
    created = ok(
        client.post(
            "/v1/admin/partners",
            {"name": name, "currency": "EUR"},
            headers={"X-Request-Id": rid},
        ),
        201,
    )
    key = ok(
        client.post(
            f"/v1/admin/partners/{created['id']}/keys",
            {"alg": "hmac-sha256", "scopes": ["earn"]},
            headers={"X-Request-Id": rid + "-key"},
        ),
        201,
    )
    served.line_of(rid)
    served.line_of(rid + "-key")
    raw = served.log_path.read_text()
    assert name not in raw
    assert key["secret"] not in raw
    assert "sig1=" not in raw and "Signature" not in raw
