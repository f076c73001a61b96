"""Bad input never reaches the ledger: malformed JSON, wrong types, NaN and Infinity, huge or
negative amounts, unknown currencies, over-long strings, unknown fields and oversized bodies
are 4xx problem documents, and nothing is written."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.conftest import Live, Partner, ok, problem, unique


@pytest.fixture(scope="module")
def shop(live: Live) -> tuple[Partner, str]:
    p = live.partner("EUR")
    return p, live.member(p, 1000)


def _earn(member: str, **changes: Any) -> bytes:
    body = {"member_id": member, "reference": unique(), "amount": "10.00", "currency": "EUR"}
    body.update(changes)
    return json.dumps(body).encode()


def _burn(member: str, **changes: Any) -> bytes:
    body = {"member_id": member, "reference": unique(), "points": 5}
    body.update(changes)
    return json.dumps(body).encode()


def _nothing_written(p: Partner, member: str) -> None:
    assert ok(p.client.get(f"/v1/members/{member}/balance"))["available"] == 1000
    listed = ok(p.client.get("/v1/transactions", params={"limit": 500}))["data"]
    assert len(listed) == 1, "only the seed earn"


CASES: list[tuple[str, str, Any, int, str, str]] = [
    # (name, path, body builder, status, kind, error path)
    ("malformed json", "/v1/earns", lambda m: b'{"member_id": ', 422, "validation", "$"),
    ("not json at all", "/v1/earns", lambda m: b"amount=10", 422, "validation", "$"),
    ("invalid utf-8", "/v1/earns", lambda m: b'{"reference": "\xff"}', 422, "validation", "$"),
    ("a json array", "/v1/earns", lambda m: b"[]", 422, "validation", "$"),
    ("empty body", "/v1/earns", lambda m: b"", 422, "validation", "$"),
    (
        "amount as a number",
        "/v1/earns",
        lambda m: _earn(m, amount=10.5),
        422,
        "validation",
        "$.amount",
    ),
    (
        "points as a string",
        "/v1/burns",
        lambda m: _burn(m, points="5"),
        422,
        "validation",
        "$.points",
    ),
    (
        "points as a float",
        "/v1/burns",
        lambda m: _burn(m, points=5.0),
        422,
        "validation",
        "$.points",
    ),
    (
        "points as a bool",
        "/v1/burns",
        lambda m: _burn(m, points=True),
        422,
        "validation",
        "$.points",
    ),
    (
        "NaN literal",
        "/v1/burns",
        lambda m: _burn(m).replace(b"5}", b"NaN}"),
        422,
        "validation",
        "$",
    ),
    (
        "Infinity literal",
        "/v1/burns",
        lambda m: _burn(m).replace(b"5}", b"Infinity}"),
        422,
        "validation",
        "$",
    ),
    (
        "1e999",
        "/v1/burns",
        lambda m: _burn(m).replace(b"5}", b"1e999}"),
        422,
        "validation",
        "$.points",
    ),
    ("NaN amount", "/v1/earns", lambda m: _earn(m, amount="NaN"), 422, "validation", "$.amount"),
    (
        "Infinity amount",
        "/v1/earns",
        lambda m: _earn(m, amount="Infinity"),
        422,
        "validation",
        "$.amount",
    ),
    ("huge points", "/v1/burns", lambda m: _burn(m, points=10**30), 422, "validation", "$.points"),
    (
        "huge amount",
        "/v1/earns",
        lambda m: _earn(m, amount="9" * 40),
        422,
        "validation",
        "$.amount",
    ),
    (
        "amount over the limit",
        "/v1/earns",
        lambda m: _earn(m, amount="1000000001"),
        422,
        "validation",
        "$.amount",
    ),
    (
        "negative amount",
        "/v1/earns",
        lambda m: _earn(m, amount="-10"),
        422,
        "validation",
        "$.amount",
    ),
    ("zero amount", "/v1/earns", lambda m: _earn(m, amount="0"), 422, "validation", "$.amount"),
    ("negative points", "/v1/burns", lambda m: _burn(m, points=-5), 422, "validation", "$.points"),
    ("zero points", "/v1/burns", lambda m: _burn(m, points=0), 422, "validation", "$.points"),
    (
        "too many decimals",
        "/v1/earns",
        lambda m: _earn(m, amount="1.001"),
        422,
        "validation",
        "$.amount",
    ),
    (
        "exponent amount",
        "/v1/earns",
        lambda m: _earn(m, amount="1e3"),
        422,
        "validation",
        "$.amount",
    ),
    (
        "lower-case currency",
        "/v1/earns",
        lambda m: _earn(m, currency="eur"),
        422,
        "validation",
        "$.currency",
    ),
    (
        "unknown currency",
        "/v1/earns",
        lambda m: _earn(m, currency="XXX"),
        422,
        "validation",
        "$.currency",
    ),
    (
        "too-long reference",
        "/v1/earns",
        lambda m: _earn(m, reference="r" * 256),
        422,
        "validation",
        "$.reference",
    ),
    (
        "empty reference",
        "/v1/earns",
        lambda m: _earn(m, reference=""),
        422,
        "validation",
        "$.reference",
    ),
    (
        "reference with spaces",
        "/v1/earns",
        lambda m: _earn(m, reference="a b"),
        422,
        "validation",
        "$.reference",
    ),
    (
        "too-long member id",
        "/v1/earns",
        lambda m: _earn(m, member_id="mem_" + "a" * 65),
        422,
        "validation",
        "$.member_id",
    ),
    ("unknown field", "/v1/earns", lambda m: _earn(m, bonus=1), 422, "validation", "$.bonus"),
    (
        "missing field",
        "/v1/burns",
        lambda m: json.dumps({"member_id": m}).encode(),
        422,
        "validation",
        "$.reference",
    ),
    (
        "occurred_at without zone",
        "/v1/earns",
        lambda m: _earn(m, occurred_at="2026-01-01T00:00:00"),
        422,
        "validation",
        "$.occurred_at",
    ),
    (
        "occurred_at in the future",
        "/v1/earns",
        lambda m: _earn(m, occurred_at="2999-01-01T00:00:00Z"),
        422,
        "validation",
        "$.occurred_at",
    ),
    (
        "points and amount",
        "/v1/burns",
        lambda m: _burn(m, amount="1.00", currency="EUR"),
        422,
        "validation",
        "$",
    ),
    (
        "amount without currency",
        "/v1/burns",
        lambda m: json.dumps({"member_id": m, "reference": "r1", "amount": "1"}).encode(),
        422,
        "validation",
        "$.currency",
    ),
    (
        "hold expires_in zero",
        "/v1/holds",
        lambda m: _burn(m, expires_in=0),
        422,
        "validation",
        "$.expires_in",
    ),
    (
        "hold expires_in a year",
        "/v1/holds",
        lambda m: _burn(m, expires_in=365 * 86400),
        422,
        "validation",
        "$.expires_in",
    ),
    (
        "oversized body",
        "/v1/earns",
        lambda m: _earn(m, reference="x" * 70_000),
        413,
        "payload-too-large",
        "",
    ),
]


@pytest.mark.parametrize(
    ("name", "path", "build", "status", "kind", "where"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_is_a_problem_and_writes_nothing(
    shop: tuple[Partner, str], name: str, path: str, build: Any, status: int, kind: str, where: str
) -> None:
    p, member = shop
    doc = problem(p.client.post(path, content=build(member)), status, kind)
    if where:
        assert doc["errors"][0]["path"] == where, doc
        assert doc["errors"][0]["message"]
    _nothing_written(p, member)


def test_bad_rate_cards_are_refused(live: Live) -> None:
    p = live.partner("EUR")
    base = {
        "earn_points_per_unit": "1",
        "issue_price_per_point": "0.01",
        "burn_value_per_point": "0.01",
        "reimburse_price_per_point": "0.008",
    }
    for field, value in [
        ("earn_points_per_unit", "-1"),
        ("burn_value_per_point", "0"),
        ("issue_price_per_point", "NaN"),
        ("reimburse_price_per_point", 0.5),
        ("max_burn_share", "1.5"),
        ("earn_points_per_unit", "1" * 40),
    ]:
        doc = problem(
            live.operator.post(f"/v1/admin/partners/{p.id}/rate-cards", base | {field: value}),
            422,
            "validation",
        )
        assert doc["errors"][0]["path"] == f"$.{field}", (field, doc)
    assert len(ok(live.operator.get(f"/v1/admin/partners/{p.id}/rate-cards"))["data"]) == 1
