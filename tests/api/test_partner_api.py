"""The partner API, row by row of the contract (docs/api.md): status codes and bodies, on
SQLite and PostgreSQL, through the live server and the stock signing client."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from tests.api.conftest import Live, ok, problem, unique

TRANSACTION_FIELDS = {
    "id",
    "kind",
    "partner_id",
    "member_id",
    "reference",
    "points",
    "amount",
    "currency",
    "rate_card_id",
    "occurred_at",
    "posted_at",
    "balance_after",
}
HOLD_FIELDS = {"id", "member_id", "points", "status", "expires_at", "reference"}


def _utc(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text)


def earn(p: Any, member_id: str, amount: str, **extra: Any) -> requests.Response:
    body = {
        "member_id": member_id,
        "reference": unique("earn"),
        "amount": amount,
        "currency": p.currency,
        **extra,
    }
    response: requests.Response = p.client.post("/v1/earns", body)
    return response


def balance(p: Any, member_id: str) -> dict[str, Any]:
    return dict(ok(p.client.get(f"/v1/members/{member_id}/balance")))


def test_me_shows_partner_rate_card_and_scopes(api: Live) -> None:
    p = api.partner("EUR", scopes=("earn", "read"))
    me = ok(p.client.get("/v1/me"))
    assert me["key_id"] == p.key.key_id and me["role"] == "partner"
    assert me["scopes"] == ["earn", "read"]
    assert me["partner"]["id"] == p.id and me["partner"]["currency"] == "EUR"
    assert me["partner"]["status"] == "active"
    assert me["rate_card"]["partner_id"] == p.id
    assert me["rate_card"]["earn_points_per_unit"] == "1"
    assert me["rate_card"]["burn_value_per_point"] == "0.01"


def test_me_for_an_operator_key_has_no_partner(api: Live) -> None:
    me = ok(api.operator.get("/v1/me"))
    assert me["role"] == "operator" and me["partner"] is None and me["rate_card"] is None


def test_create_member_is_201_and_an_existing_id_is_200(api: Live) -> None:
    p = api.partner()
    made = ok(p.client.post("/v1/members", {}), 201)
    assert set(made) == {"member_id"} and made["member_id"].startswith("mem_")
    own = f"mem_{unique('own').replace('-', '_')}"
    assert ok(p.client.post("/v1/members", {"member_id": own}), 201) == {"member_id": own}
    assert ok(p.client.post("/v1/members", {"member_id": own}), 200) == {"member_id": own}
    problem(p.client.post("/v1/members", {"member_id": "bob"}), 422, "validation")


def test_balance_shows_available_held_tier_and_expiring(api: Live) -> None:
    p = api.partner()
    member = api.member(p, 300)
    ok(
        p.client.post("/v1/holds", {"member_id": member, "reference": unique("h"), "points": 100}),
        201,
    )
    got = balance(p, member)
    assert set(got) == {"member_id", "available", "held", "tier", "expiring"}
    assert (got["member_id"], got["available"], got["held"], got["tier"]) == (
        member,
        200,
        100,
        "base",
    )
    assert len(got["expiring"]) == 1 and got["expiring"][0]["points"] == 300
    assert _utc(got["expiring"][0]["expires_at"]) > datetime.now(UTC) + timedelta(days=365)


def test_balance_of_an_unknown_member_is_404(api: Live) -> None:
    p = api.partner()
    doc = problem(p.client.get("/v1/members/mem_nobody/balance"), 404, "unknown-member")
    assert "mem_nobody" in doc["detail"]


def test_earn_is_201_with_the_transaction(api: Live) -> None:
    p = api.partner("EUR", earn="2")
    member = api.member(p)
    txn = ok(earn(p, member, "12.55"), 201)
    assert set(txn) == TRANSACTION_FIELDS
    assert txn["id"].startswith("txn_") and txn["kind"] == "earn"
    assert (txn["partner_id"], txn["member_id"]) == (p.id, member)
    assert txn["points"] == 25  # floor(12.55 x 2)
    assert (txn["amount"], txn["currency"]) == ("12.55", "EUR")
    assert txn["rate_card_id"].startswith("rc_") and txn["balance_after"] == 25
    assert _utc(txn["posted_at"]) >= _utc(txn["occurred_at"])


def test_earn_amounts_carry_the_currency_exponent(api: Live) -> None:
    jpy = api.partner("JPY", earn="0.01")
    member = api.member(jpy)
    assert ok(earn(jpy, member, "1200"), 201)["amount"] == "1200"
    bhd = api.partner("BHD")
    assert ok(earn(bhd, member, "1.5"), 201)["amount"] == "1.500"
    problem(earn(bhd, member, "1.2345"), 422, "validation")


def test_earn_with_occurred_at_keeps_it(api: Live) -> None:
    p = api.partner()
    member = api.member(p)
    when = (datetime.now(UTC) - timedelta(seconds=1)).replace(microsecond=0)
    txn = ok(earn(p, member, "10", occurred_at=when.isoformat().replace("+00:00", "Z")), 201)
    assert _utc(txn["occurred_at"]) == when


def test_earn_in_another_currency_is_currency_mismatch(api: Live) -> None:
    p = api.partner("EUR")
    member = api.member(p)
    body = {"member_id": member, "reference": unique(), "amount": "10", "currency": "USD"}
    doc = problem(p.client.post("/v1/earns", body), 422, "currency-mismatch")
    assert doc["expected"] == "EUR"


def test_earn_for_an_unknown_member_is_404(api: Live) -> None:
    p = api.partner()
    problem(earn(p, "mem_ghost", "10"), 404, "unknown-member")


def test_second_earn_with_a_reference_is_duplicate_reference_naming_the_first(api: Live) -> None:
    p = api.partner()
    member = api.member(p)
    body = {"member_id": member, "reference": unique(), "amount": "10", "currency": "EUR"}
    first = ok(p.client.post("/v1/earns", body), 201)
    doc = problem(p.client.post("/v1/earns", body), 409, "duplicate-reference")
    assert doc["transaction_id"] == first["id"]


def test_a_suspended_partner_cannot_earn(api: Live) -> None:
    p = api.partner()
    member = api.member(p)
    ok(api.operator.patch(f"/v1/admin/partners/{p.id}", {"status": "suspended"}))
    problem(earn(p, member, "10"), 403, "partner-not-active")
    ok(api.operator.patch(f"/v1/admin/partners/{p.id}", {"status": "active"}))
    ok(earn(p, member, "10"), 201)


def test_burn_by_points_prices_the_amount(api: Live) -> None:
    p = api.partner("EUR", burn="0.01")
    member = api.member(p, 500)
    body = {"member_id": member, "reference": unique("b"), "points": 250}
    txn = ok(p.client.post("/v1/burns", body), 201)
    assert set(txn) == TRANSACTION_FIELDS
    assert (txn["kind"], txn["points"], txn["amount"], txn["currency"]) == (
        "burn",
        250,
        "2.50",
        "EUR",
    )
    assert txn["balance_after"] == 250


def test_burn_by_amount_rounds_points_up(api: Live) -> None:
    p = api.partner("EUR", burn="0.03")
    member = api.member(p, 500)
    body = {"member_id": member, "reference": unique("b"), "amount": "1.00", "currency": "EUR"}
    txn = ok(p.client.post("/v1/burns", body), 201)
    assert txn["points"] == 34  # ceil(1.00 / 0.03)
    assert txn["amount"] == "1.02"


def test_burn_beyond_the_available_balance_is_insufficient_points_and_changes_nothing(
    api: Live,
) -> None:
    p = api.partner()
    member = api.member(p, 100)
    body = {"member_id": member, "reference": unique("b"), "points": 101}
    doc = problem(p.client.post("/v1/burns", body), 409, "insufficient-points")
    assert (doc["available"], doc["requested"]) == (100, 101)
    assert balance(p, member)["available"] == 100


def test_burn_over_the_basket_cap_is_burn_cap_exceeded(api: Live) -> None:
    p = api.partner("EUR", burn="0.01", max_burn_share="0.5")
    member = api.member(p, 1000)
    body = {
        "member_id": member,
        "reference": unique("b"),
        "points": 600,
        "basket_amount": "10.00",
    }
    doc = problem(p.client.post("/v1/burns", body), 422, "burn-cap-exceeded")
    assert doc["max_amount"] == "5.00"
    body["points"] = 500
    ok(p.client.post("/v1/burns", body), 201)


def test_hold_capture_and_void(api: Live) -> None:
    p = api.partner()
    member = api.member(p, 1000)
    ref = unique("h")
    hold = ok(
        p.client.post("/v1/holds", {"member_id": member, "reference": ref, "points": 400}), 201
    )
    assert set(hold) == HOLD_FIELDS
    assert (hold["member_id"], hold["points"], hold["status"], hold["reference"]) == (
        member,
        400,
        "active",
        ref,
    )
    assert _utc(hold["expires_at"]) > datetime.now(UTC) + timedelta(minutes=10)
    assert ok(p.client.get(f"/v1/holds/{hold['id']}")) == hold
    assert balance(p, member)["available"] == 600
    # held points are not available to other burns
    over = {"member_id": member, "reference": unique("b"), "points": 601}
    problem(p.client.post("/v1/burns", over), 409, "insufficient-points")

    burn = ok(p.client.post(f"/v1/holds/{hold['id']}/capture", {"points": 300}))
    assert (burn["kind"], burn["points"], burn["amount"], burn["reference"]) == (
        "burn",
        300,
        "3.00",
        ref,
    )
    assert ok(p.client.get(f"/v1/holds/{hold['id']}"))["status"] == "captured"
    assert balance(p, member) | {"expiring": None} == {
        "member_id": member,
        "available": 700,
        "held": 0,
        "tier": "base",
        "expiring": None,
    }
    doc = problem(p.client.post(f"/v1/holds/{hold['id']}/capture", {}), 409, "hold-not-active")
    assert doc["hold_status"] == "captured"

    second = ok(
        p.client.post("/v1/holds", {"member_id": member, "reference": unique("h"), "points": 50}),
        201,
    )
    voided = ok(p.client.post(f"/v1/holds/{second['id']}/void", {}))
    assert voided["status"] == "voided" and voided["id"] == second["id"]
    assert balance(p, member)["available"] == 700
    problem(p.client.post(f"/v1/holds/{second['id']}/void", {}), 409, "hold-not-active")


def test_capture_of_more_than_held_is_refused(api: Live) -> None:
    p = api.partner()
    member = api.member(p, 100)
    hold = ok(
        p.client.post("/v1/holds", {"member_id": member, "reference": unique(), "points": 10}),
        201,
    )
    doc = problem(
        p.client.post(f"/v1/holds/{hold['id']}/capture", {"points": 11}), 422, "validation"
    )
    assert doc["errors"][0]["path"] == "$.points"


def test_a_hold_past_its_expiry_reads_expired_and_releases_its_points(api: Live) -> None:
    p = api.partner()
    member = api.member(p, 100)
    body = {"member_id": member, "reference": unique("h"), "points": 60, "expires_in": 1}
    hold = ok(p.client.post("/v1/holds", body), 201)
    deadline = time.monotonic() + 5
    status = "active"
    while status == "active" and time.monotonic() < deadline:
        time.sleep(0.1)
        status = ok(p.client.get(f"/v1/holds/{hold['id']}"))["status"]
    assert status == "expired"
    problem(p.client.post(f"/v1/holds/{hold['id']}/capture", {}), 409, "hold-not-active")
    burn = {"member_id": member, "reference": unique("b"), "points": 100}
    ok(p.client.post("/v1/burns", burn), 201)


def test_hold_of_another_partner_is_404(api: Live) -> None:
    p, other = api.partner(), api.partner()
    member = api.member(p, 100)
    hold = ok(
        p.client.post("/v1/holds", {"member_id": member, "reference": unique(), "points": 10}),
        201,
    )
    problem(other.client.get(f"/v1/holds/{hold['id']}"), 404, "not-found")
    problem(other.client.post(f"/v1/holds/{hold['id']}/capture", {}), 404, "not-found")
    problem(other.client.post(f"/v1/holds/{hold['id']}/void", {}), 404, "not-found")
    problem(p.client.get("/v1/holds/hold_nope"), 404, "not-found")


def test_reversals_of_an_earn_partial_then_the_rest_then_none(api: Live) -> None:
    p = api.partner()
    member = api.member(p)
    original = ok(earn(p, member, "100"), 201)
    url = f"/v1/transactions/{original['id']}/reversals"
    part = ok(p.client.post(url, {"reference": unique("r"), "points": 30}), 201)
    assert set(part) == TRANSACTION_FIELDS | {"reverses"}
    assert (part["kind"], part["points"], part["reverses"], part["amount"]) == (
        "earn_reversal",
        30,
        original["id"],
        "30.00",
    )
    rest = ok(p.client.post(url, {"reference": unique("r")}), 201)
    assert (rest["points"], rest["amount"], rest["balance_after"]) == (70, "70.00", 0)
    doc = problem(
        p.client.post(url, {"reference": unique("r"), "points": 1}),
        409,
        "reversal-exceeds-original",
    )
    assert doc["remaining_points"] == 0


def test_reversal_of_a_burn_gives_points_back(api: Live) -> None:
    p = api.partner()
    member = api.member(p, 100)
    burn = ok(
        p.client.post("/v1/burns", {"member_id": member, "reference": unique(), "points": 40}),
        201,
    )
    back = ok(
        p.client.post(f"/v1/transactions/{burn['id']}/reversals", {"reference": unique("r")}),
        201,
    )
    assert (back["kind"], back["points"], back["reverses"], back["balance_after"]) == (
        "burn_reversal",
        40,
        burn["id"],
        100,
    )


def test_get_transaction_and_another_partners_is_404(api: Live) -> None:
    p, other = api.partner(), api.partner()
    member = api.member(p)
    txn = ok(earn(p, member, "10"), 201)
    assert ok(p.client.get(f"/v1/transactions/{txn['id']}")) == txn
    problem(other.client.get(f"/v1/transactions/{txn['id']}"), 404, "not-found")
    problem(
        other.client.post(f"/v1/transactions/{txn['id']}/reversals", {"reference": unique()}),
        404,
        "not-found",
    )


def test_list_transactions_filters_and_pages(api: Live) -> None:
    p, other = api.partner(), api.partner()
    alice, bob = api.member(p), api.member(p)
    made = [ok(earn(p, alice if i % 2 else bob, "10"), 201) for i in range(5)]
    ok(earn(other, alice, "10"), 201)
    burn = ok(
        p.client.post("/v1/burns", {"member_id": alice, "reference": unique(), "points": 5}),
        201,
    )
    everything = ok(p.client.get("/v1/transactions", params={"limit": 500}))
    ids = [t["id"] for t in everything["data"]]
    assert ids == sorted(ids, reverse=True), "newest first"
    assert {t["partner_id"] for t in everything["data"]} == {p.id}
    assert everything["has_more"] is False and everything["next_cursor"] is None

    only_alice = ok(p.client.get("/v1/transactions", params={"member_id": alice}))["data"]
    assert {t["member_id"] for t in only_alice} == {alice} and len(only_alice) == 3
    burns = ok(p.client.get("/v1/transactions", params={"kind": "burn"}))["data"]
    assert [t["id"] for t in burns] == [burn["id"]]
    since = made[2]["posted_at"]
    until = burn["posted_at"]
    window = ok(p.client.get("/v1/transactions", params={"since": since, "until": until}))
    assert [t["id"] for t in window["data"]] == [m["id"] for m in reversed(made[2:])]

    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = ok(p.client.get("/v1/transactions", params=params))
        pages.append([t["id"] for t in page["data"]])
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert [len(x) for x in pages] == [2, 2, 2] and [i for page in pages for i in page] == ids


def test_list_transactions_refuses_bad_parameters(api: Live) -> None:
    p = api.partner()
    for params, path in [
        ({"limit": 0}, "query.limit"),
        ({"limit": 501}, "query.limit"),
        ({"kind": "gift"}, "query.kind"),
        ({"cursor": "c1.garbage!"}, "query.cursor"),
        ({"cursor": "not-ours"}, "query.cursor"),
        ({"since": "yesterday"}, "query.since"),
        ({"since": "2026-01-01T00:00:00"}, "query.since"),
        # the domain names the field ("until"); the edge says where it was: the query
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "query.until"),
    ]:
        doc = problem(p.client.get("/v1/transactions", params=params), 422, "validation")
        assert doc["errors"][0]["path"] == path, (params, doc)


def test_signing_keys_is_unsigned_and_a_list(api: Live) -> None:
    # The shared server may hold keys other tests' closes made: the shape, not the count.
    keys = ok(requests.get(api.base_url + "/v1/signing-keys", timeout=10))
    assert isinstance(keys, list)
    for key in keys:
        assert set(key) == {"kid", "alg", "public_key"}
        assert key["alg"] == "ed25519"


def test_health_is_unsigned(api: Live) -> None:
    response = requests.get(api.base_url + "/v1/health", timeout=10)
    assert ok(response) == {"status": "ok", "database": "ok"}
    assert response.headers["X-Request-Id"].startswith("req_")
