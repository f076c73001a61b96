"""RFC 9457 problem documents at the edge: routing errors, the problem pages, an unexpected
failure (a 500 whose error id is in the log, nothing else), an unreachable database (503)."""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from litestar import get

from api.problems import KINDS, location
from coalition.db import make_engine, migrate
from tests.api.conftest import Client, Key, Live, problem, serve


def test_an_unknown_path_is_not_found(live: Live) -> None:
    problem(requests.get(live.base_url + "/v2/nothing", timeout=10), 404, "not-found")
    problem(live.operator.get("/v1/nothing"), 404, "not-found")


def test_a_wrong_method_is_method_not_allowed(live: Live) -> None:
    response = requests.delete(live.base_url + "/v1/health", timeout=10)
    problem(response, 405, "method-not-allowed")
    assert "GET" in response.headers["Allow"]


def test_every_problem_type_has_a_page(live: Live) -> None:
    for code, kind in KINDS.items():
        page = requests.get(f"{live.base_url}/problems/{code}", timeout=10)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert html.escape(kind.title) in page.text and f"HTTP {kind.status}" in page.text
    problem(requests.get(live.base_url + "/problems/nope", timeout=10), 404, "not-found")


def test_every_contract_kind_exists_with_its_status() -> None:
    contract = {
        "insufficient-points": 409,
        "burn-cap-exceeded": 422,
        "currency-mismatch": 422,
        "unknown-member": 404,
        "duplicate-reference": 409,
        "idempotency-key-missing": 400,
        "idempotency-key-reused": 422,
        "idempotency-key-in-use": 409,
        "hold-not-active": 409,
        "reversal-exceeds-original": 409,
        "partner-not-active": 403,
        "statement-closed": 409,
        "signature-invalid": 401,
        "validation": 422,
        "payload-too-large": 413,
        "unavailable": 503,
        "not-found": 404,
        "forbidden": 403,
        "conflict": 409,
        "method-not-allowed": 405,
    }
    assert {code: KINDS[code].status for code in contract} == contract


SECRET = "postgresql://admin:hunter2@db/ledger SELECT * FROM api_keys"


@get("/v1/test-explode", sync_to_thread=False, include_in_schema=False)
def explode() -> None:
    raise RuntimeError(SECRET)


@pytest.fixture(scope="module")
def exploding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    url = f"sqlite:///{tmp_path_factory.mktemp('explode') / 'db.sqlite3'}"
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    yield from serve(url, "sqlite", routes=[explode])


def test_a_domain_field_is_located_where_the_request_carried_it() -> None:
    # decision 14: the domain names the field, the edge says where it is in the request
    assert location("amount", in_query=False) == "$.amount"
    assert location("transaction_ids[2]", in_query=False) == "$.transaction_ids[2]"
    assert location("limit", in_query=True) == "query.limit"
    assert location("", in_query=False) == "$"
    for made_by_the_edge in ("$.x", "query.cursor", "path.id", "header.content-type"):
        assert location(made_by_the_edge, in_query=True) == made_by_the_edge
        assert location(made_by_the_edge, in_query=False) == made_by_the_edge


def test_an_unexpected_failure_is_500_with_an_error_id_in_the_log(
    exploding: Live, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="coalition.api"):
        response = requests.get(exploding.base_url + "/v1/test-explode", timeout=10)
    doc = problem(response, 500, "internal-error")
    assert doc["error_id"] == doc["request_id"]
    assert "hunter2" not in response.text and "Traceback" not in response.text
    assert "SELECT" not in response.text
    logged = [r for r in caplog.records if doc["error_id"] in r.getMessage()]
    assert logged and logged[0].exc_info is not None


@pytest.fixture(scope="module")
def no_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    missing: Path = tmp_path_factory.mktemp("gone") / "no" / "such" / "dir" / "db.sqlite3"
    yield from serve(f"sqlite:///{missing}", "sqlite", ready=503)


def test_health_is_503_when_the_database_is_unreachable(no_database: Live) -> None:
    response = requests.get(no_database.base_url + "/v1/health", timeout=10)
    problem(response, 503, "unavailable")
    assert int(response.headers["Retry-After"]) > 0


def test_a_signed_request_is_503_when_the_database_is_unreachable(no_database: Live) -> None:
    client = Client(no_database.base_url, Key("key_x", "hmac-sha256", b"k" * 32))
    problem(client.get("/v1/me"), 503, "unavailable")
    problem(client.post("/v1/earns", {}), 503, "unavailable")
