"""``POST /v1/earn-batches``: 1 to 500 earns in one signed, idempotent request; a result per
item in the order given, each what ``POST /v1/earns`` would have answered for it."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import Live, ok, problem, unique


def _earn(
    member: str, reference: str, amount: str = "5.00", currency: str = "EUR"
) -> dict[str, Any]:
    return {"member_id": member, "reference": reference, "amount": amount, "currency": currency}


def test_each_item_gets_its_own_result_in_order(api: Live) -> None:
    partner = api.partner()
    member = api.member(partner)
    used = unique("used")
    first = ok(partner.client.post("/v1/earns", _earn(member, used)), 201)
    fresh, bad_amount, nobody, other_currency = (unique(p) for p in ("a", "b", "c", "d"))
    body = {
        "earns": [
            _earn(member, fresh, "12.50"),
            _earn(member, used),
            _earn(member, bad_amount, "12.5.0"),
            _earn("mem_nobody-here", nobody),
            _earn(member, other_currency, currency="USD"),
            {"member_id": member, "reference": unique("e"), "amount": "1.00"},
        ]
    }
    results = ok(partner.client.post("/v1/earn-batches", body))["results"]
    assert [r["status"] for r in results] == [
        "created",
        "duplicate",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
    ]
    assert [r["reference"] for r in results[:5]] == [
        fresh,
        used,
        bad_amount,
        nobody,
        other_currency,
    ]
    created = results[0]["transaction"]
    assert created["kind"] == "earn" and created["points"] == 12 and created["reference"] == fresh
    assert results[1]["problem"]["type"] == "/problems/duplicate-reference"
    assert results[1]["problem"]["transaction_id"] == first["id"]
    assert results[2]["problem"]["errors"][0]["path"] == "$.amount"
    assert results[3]["problem"]["type"] == "/problems/unknown-member"
    assert results[4]["problem"]["type"] == "/problems/currency-mismatch"
    assert results[5]["problem"]["type"] == "/problems/validation"
    balance = ok(partner.client.get(f"/v1/members/{member}/balance"))
    assert balance["available"] == 5 + 12


def test_a_batch_is_idempotent_like_every_post(api: Live) -> None:
    partner = api.partner()
    member = api.member(partner)
    body = {"earns": [_earn(member, unique("i"))]}
    first = partner.client.post("/v1/earn-batches", body, idempotency_key="batch-key-1")
    again = partner.client.post("/v1/earn-batches", body, idempotency_key="batch-key-1")
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true" and again.json() == first.json()
    problem(
        partner.client.post("/v1/earn-batches", body, idempotency_key=None),
        400,
        "idempotency-key-missing",
    )
    assert ok(partner.client.get(f"/v1/members/{member}/balance"))["available"] == 5


def test_a_batch_holds_1_to_500_earns(api: Live) -> None:
    partner = api.partner()
    member = api.member(partner)
    full = {
        "earns": [
            {
                **_earn(member, unique("full-" + "r" * 150), "1"),
                "occurred_at": "2026-01-05T09:00:00Z",
            }
            for _ in range(500)
        ]
    }
    results = ok(partner.client.post("/v1/earn-batches", full))["results"]
    # no rate card was in force then: each item rejected, none refused for the size
    assert len(results) == 500 and {r["status"] for r in results} == {"rejected"}
    problem(partner.client.post("/v1/earn-batches", {"earns": []}), 422, "validation")
    too_many = {"earns": [_earn(member, f"x-{n}", "1") for n in range(501)]}
    problem(partner.client.post("/v1/earn-batches", too_many), 422, "validation")
    problem(partner.client.post("/v1/earn-batches", {"earns": [], "x": 1}), 422, "validation")


def test_a_batch_needs_the_earn_scope(api: Live) -> None:
    partner = api.partner(scopes=("burn", "read"))
    member = api.member()
    body = {"earns": [_earn(member, unique("s"))]}
    problem(partner.client.post("/v1/earn-batches", body), 403, "forbidden")


def test_a_body_over_a_limit_is_413_naming_that_endpoints_limit(api: Live) -> None:
    partner = api.partner()
    member = api.member(partner)
    earns = [_earn(member, unique("big-" + "r" * 200)) for _ in range(2400)]
    doc = problem(
        partner.client.post("/v1/earn-batches", {"earns": earns}), 413, "payload-too-large"
    )
    assert doc["detail"] == "this endpoint's request bodies may be at most 512 KiB", doc
    over_64 = _earn(member, "x" * 70_000)
    doc = problem(partner.client.post("/v1/earns", over_64), 413, "payload-too-large")
    assert doc["detail"] == "this endpoint's request bodies may be at most 64 KiB", doc
