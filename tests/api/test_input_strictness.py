"""Input is taken exactly as documented, on both backends: one member-id limit everywhere, full
matches (no trailing newline in any string field), NUL bytes refused as 404/422 (never a 500),
and a repeated JSON key refused (``422 validation``), each time with nothing written."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import requests
from sqlalchemy import text

from coalition.ids import MEMBER_ID_MAX_LENGTH
from tests.api.conftest import Live, Partner, ok, problem, unique

#: Tables whose rows are the service's effects (idempotency records and nonces aside).
EFFECT_TABLES = (
    "members",
    "transactions",
    "lots",
    "holds",
    "partners",
    "rate_cards",
    "api_keys",
)


def row_counts(live: Live) -> dict[str, int]:
    with live.engine.connect() as conn:
        return {
            t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in EFFECT_TABLES
        }


def refused_without_effect(
    live: Live, send: Callable[[], requests.Response], status: int, kind: str
) -> dict[str, Any]:
    before = row_counts(live)
    doc = problem(send(), status, kind)
    assert row_counts(live) == before
    return doc


@pytest.fixture(scope="module")
def shop(api: Live) -> tuple[Partner, str]:
    partner = api.partner("EUR", scopes=("earn", "burn", "read"))
    return partner, api.member(partner, 1000)


# --- defect 2: one member-id limit ---------------------------------------------------------


@pytest.mark.parametrize("length", [41, 52, 65, MEMBER_ID_MAX_LENGTH])
def test_member_ids_up_to_the_documented_length_work_at_every_entry_point(
    api: Live, length: int
) -> None:
    partner = api.partner("EUR")
    member = "mem_" + "x" * (length - 5) + unique("")[-1]
    assert len(member) == length
    assert ok(partner.client.post("/v1/members", {"member_id": member}), 201) == {
        "member_id": member
    }
    earn = {"member_id": member, "reference": unique(), "amount": "10", "currency": "EUR"}
    ok(partner.client.post("/v1/earns", earn), 201)
    assert ok(partner.client.get(f"/v1/members/{member}/balance"))["available"] == 10
    listed = ok(partner.client.get("/v1/transactions", params={"member_id": member}))["data"]
    assert [t["member_id"] for t in listed] == [member]


def test_a_member_id_over_the_limit_is_refused_the_same_everywhere(
    api: Live, shop: tuple[Partner, str]
) -> None:
    partner, _ = shop
    too_long = "mem_" + "y" * (MEMBER_ID_MAX_LENGTH - 3)
    earn = {"member_id": too_long, "reference": unique(), "amount": "1", "currency": "EUR"}
    for send, path in (
        (lambda: partner.client.post("/v1/members", {"member_id": too_long}), "$.member_id"),
        (lambda: partner.client.post("/v1/earns", earn), "$.member_id"),
        (lambda: partner.client.get(f"/v1/members/{too_long}/balance"), "path.member_id"),
        (
            lambda: partner.client.get("/v1/transactions", params={"member_id": too_long}),
            "query.member_id",
        ),
    ):
        doc = refused_without_effect(api, send, 422, "validation")
        assert doc["errors"][0]["path"] == path


# --- defect 3: full matches ----------------------------------------------------------------

#: Every string field of every request body: (path, valid body, field).
Body = Callable[[Partner, str], dict[str, Any]]


def _earn(p: Partner, m: str) -> dict[str, Any]:
    return {"member_id": m, "reference": unique(), "amount": "1.00", "currency": "EUR"}


def _burn_amount(p: Partner, m: str) -> dict[str, Any]:
    return {
        "member_id": m,
        "reference": unique(),
        "amount": "0.10",
        "currency": "EUR",
        "basket_amount": "10.00",
    }


def _hold(p: Partner, m: str) -> dict[str, Any]:
    return {"member_id": m, "reference": unique(), "points": 1}


def _rates(p: Partner, m: str) -> dict[str, Any]:
    return {
        "earn_points_per_unit": "1",
        "issue_price_per_point": "0.01",
        "burn_value_per_point": "0.01",
        "reimburse_price_per_point": "0.008",
        "max_burn_share": "0.5",
        "effective_from": "2099-01-01T00:00:00Z",
    }


def _bonus(p: Partner, m: str) -> dict[str, Any]:
    return {"member_id": m, "points": 1, "reason": "welcome", "funded_by": "coalition"}


def _adjustment(p: Partner, m: str) -> dict[str, Any]:
    return {"member_id": m, "points": 1, "reason": "correction"}


def _ed25519(p: Partner, m: str) -> dict[str, Any]:
    return {"alg": "ed25519", "scopes": ["read"], "public_key": "A" * 43}


STRING_FIELDS: list[tuple[str, str, Body, str]] = [
    # (who, path, body, field); who: partner or operator
    ("partner", "/v1/members", lambda p, m: {"member_id": "mem_" + unique("n")}, "member_id"),
    *[("partner", "/v1/earns", _earn, f) for f in ("member_id", "reference", "amount", "currency")],
    (
        "partner",
        "/v1/earns",
        lambda p, m: {**_earn(p, m), "occurred_at": "2026-01-05T09:00:00Z"},
        "occurred_at",
    ),
    *[
        ("partner", "/v1/burns", _burn_amount, f)
        for f in ("member_id", "reference", "amount", "currency", "basket_amount")
    ],
    *[("partner", "/v1/holds", _hold, f) for f in ("member_id", "reference")],
    ("operator", "/v1/admin/partners", lambda p, m: {"name": "n", "currency": "EUR"}, "name"),
    ("operator", "/v1/admin/partners", lambda p, m: {"name": "n", "currency": "EUR"}, "currency"),
    *[
        ("operator", "/v1/admin/partners/{partner}/rate-cards", _rates, f)
        for f in (
            "earn_points_per_unit",
            "issue_price_per_point",
            "burn_value_per_point",
            "reimburse_price_per_point",
            "max_burn_share",
            "effective_from",
        )
    ],
    *[
        ("operator", "/v1/admin/partners/{partner}/keys", _ed25519, f)
        for f in ("alg", "public_key")
    ],
    ("operator", "/v1/admin/operator-keys", lambda p, m: {"role": "finance"}, "role"),
    *[("operator", "/v1/admin/bonuses", _bonus, f) for f in ("member_id", "reason", "funded_by")],
    *[("operator", "/v1/admin/adjustments", _adjustment, f) for f in ("member_id", "reason")],
]


def _client(api: Live, partner: Partner, who: str) -> Any:
    return partner.client if who == "partner" else api.operator


@pytest.mark.parametrize(
    ("who", "path", "make", "field"),
    STRING_FIELDS,
    ids=[f"{path} {field}" for _, path, _, field in STRING_FIELDS],
)
@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\x00"], ids=["newline", "crlf", "nul"])
def test_no_string_field_takes_a_trailing_newline_or_a_nul(
    api: Live,
    shop: tuple[Partner, str],
    who: str,
    path: str,
    make: Body,
    field: str,
    suffix: str,
) -> None:
    partner, member = shop
    body = make(partner, member)
    body[field] = body[field] + suffix
    client = _client(api, partner, who)
    url = path.format(partner=partner.id)
    doc = refused_without_effect(api, lambda: client.post(url, body), 422, "validation")
    assert doc["errors"][0]["path"] == f"$.{field}", doc
    assert "regex" not in doc["errors"][0]["message"], "the rule is said in words"


def test_patch_fields_take_no_trailing_newline(api: Live, shop: tuple[Partner, str]) -> None:
    partner, _ = shop
    for field, value in (("name", "renamed"), ("currency", "EUR"), ("status", "active")):
        url, patch = f"/v1/admin/partners/{partner.id}", {field: value + "\n"}
        send = partial(api.operator.patch, url, patch)
        doc = refused_without_effect(api, send, 422, "validation")
        assert doc["errors"][0]["path"] == f"$.{field}"


def test_a_look_alike_member_with_a_trailing_newline_is_not_made(
    api: Live, shop: tuple[Partner, str]
) -> None:
    partner, member = shop
    refused_without_effect(
        api,
        lambda: partner.client.post("/v1/members", {"member_id": member + "\n"}),
        422,
        "validation",
    )


# --- defect 4: NUL bytes -------------------------------------------------------------------


def test_nul_bytes_in_path_ids_are_refused_not_a_500(api: Live, shop: tuple[Partner, str]) -> None:
    partner, member = shop
    op = api.operator
    for client, method, path in (
        (partner.client, "GET", "/v1/transactions/txn_%00"),
        (partner.client, "GET", "/v1/holds/hold_%00x"),
        (partner.client, "POST", "/v1/holds/hold_%00x/void"),
        (partner.client, "POST", "/v1/holds/hold_%00x/capture"),
        (partner.client, "POST", "/v1/transactions/txn_%00/reversals"),
        (partner.client, "GET", f"/v1/members/{member}%00/balance"),
        (partner.client, "GET", "/v1/members/mem_a%00b/balance"),
        (op, "GET", "/v1/admin/partners/prt_%00"),
        (op, "GET", "/v1/admin/partners/prt_%00/rate-cards"),
        (op, "GET", "/v1/admin/partners/prt_%00/keys"),
        (op, "PATCH", "/v1/admin/partners/prt_%00"),
        (op, "POST", "/v1/admin/keys/key_%00/revoke"),
        (partner.client, "GET", "/v1/transactions/txn_%00%0AERROR%20-%20FORGED-LINE"),
    ):
        body: dict[str, Any] | None = {} if method in ("POST", "PATCH") else None
        response = client.request(method, path, json=body)
        assert response.status_code in (404, 422), (path, response.status_code, response.text)
        problem(response, response.status_code, response.json()["type"].rsplit("/", 1)[1])


def test_nul_bytes_in_query_values_are_refused(api: Live, shop: tuple[Partner, str]) -> None:
    partner, _ = shop
    for name, value in (
        ("member_id", "mem_a\x00b"),
        ("since", "2026-01-01T00:00:00Z\x00"),
        ("until", "\x00"),
        ("cursor", "c_\x00"),
        ("kind", "earn\x00"),
    ):
        doc = problem(
            partner.client.get("/v1/transactions", params={name: value}), 422, "validation"
        )
        assert doc["errors"][0]["path"] == f"query.{name}", doc
        assert "regex" not in doc["errors"][0]["message"], "the rule is said in words"
    for path, name in (("/v1/admin/partners", "cursor"), ("/v1/admin/reports/liability", "at")):
        doc = problem(api.operator.get(path, params={name: "x\x00"}), 422, "validation")
        assert doc["errors"][0]["path"] == f"query.{name}", doc


# --- defect 5: duplicate keys --------------------------------------------------------------


def test_a_repeated_key_is_refused_and_earns_nothing(api: Live, shop: tuple[Partner, str]) -> None:
    partner, member = shop
    member_json, reference_json = json.dumps(member), json.dumps(unique())
    body = (
        f'{{"member_id": {member_json}, "reference": {reference_json}, "amount": "1.00", '
        '"currency": "EUR", "amount": "999.00"}'
    ).encode()
    doc = refused_without_effect(
        api, lambda: partner.client.post("/v1/earns", content=body), 422, "validation"
    )
    assert doc["errors"][0]["path"] == "$.amount"
    assert ok(partner.client.get(f"/v1/members/{member}/balance"))["available"] == 1000


def test_a_repeated_key_is_refused_on_operator_endpoints_too(
    api: Live, shop: tuple[Partner, str]
) -> None:
    _, member = shop
    member_json = json.dumps(member)
    body = f'{{"member_id": {member_json}, "points": 1, "points": 100000, "reason": "r"}}'.encode()
    doc = refused_without_effect(
        api, lambda: api.operator.post("/v1/admin/adjustments", content=body), 422, "validation"
    )
    assert doc["errors"][0]["path"] == "$.points"


def test_deep_nesting_is_a_validation_problem(api: Live, shop: tuple[Partner, str]) -> None:
    partner, _ = shop
    for body in (b"[" * 20000 + b"]" * 20000, b'{"a":' * 10000 + b"1" + b"}" * 10000):
        send = partial(partner.client.post, "/v1/members", content=body)
        refused_without_effect(api, send, 422, "validation")


@pytest.mark.parametrize("blank", [b"\t", b" ", b"\r\n"])
def test_a_body_of_white_space_is_not_an_empty_object(api: Live, blank: bytes) -> None:
    """An endpoint whose fields are all optional takes no body as ``{}``; white space alone
    is not JSON (it was a close at the default cut-off)."""
    doc = refused_without_effect(
        api,
        lambda: api.operator.request("POST", "/v1/admin/settlement/close", content=blank),
        422,
        "validation",
    )
    assert doc["errors"] == [{"path": "$", "message": "a JSON object is required"}]
