"""The operator API (``/v1/admin``), row by row of the contract: partners, rate cards, keys,
bonuses, adjustments and the liability report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.api.conftest import Live, ok, problem, unique

PARTNER_FIELDS = {"id", "name", "currency", "status", "created_at"}


def test_partners_create_list_get_patch(api: Live) -> None:
    made = ok(api.operator.post("/v1/admin/partners", {"name": "Grocer", "currency": "EUR"}), 201)
    assert set(made) == PARTNER_FIELDS and made["id"].startswith("prt_")
    assert (made["name"], made["currency"], made["status"]) == ("Grocer", "EUR", "active")
    assert ok(api.operator.get(f"/v1/admin/partners/{made['id']}")) == made

    patched = ok(
        api.operator.patch(
            f"/v1/admin/partners/{made['id']}",
            {"name": "Grocer Ltd", "currency": "GBP", "status": "suspended"},
        )
    )
    assert (patched["name"], patched["currency"], patched["status"]) == (
        "Grocer Ltd",
        "GBP",
        "suspended",
    )
    problem(api.operator.get("/v1/admin/partners/prt_nope"), 404, "not-found")
    problem(api.operator.patch("/v1/admin/partners/prt_nope", {"name": "x"}), 404, "not-found")
    problem(
        api.operator.patch(f"/v1/admin/partners/{made['id']}", {"status": "gone"}),
        422,
        "validation",
    )

    newer = ok(api.operator.post("/v1/admin/partners", {"name": "Air", "currency": "JPY"}), 201)
    first = ok(api.operator.get("/v1/admin/partners", params={"limit": 1}))
    assert first["data"] == [newer]
    assert len(first["data"]) == 1 and first["has_more"] is True
    second = ok(
        api.operator.get("/v1/admin/partners", params={"limit": 1, "cursor": first["next_cursor"]})
    )
    assert second["data"][0]["id"] < first["data"][0]["id"]


def test_currency_is_fixed_once_a_rate_card_exists(api: Live) -> None:
    p = api.partner("EUR")
    problem(api.operator.patch(f"/v1/admin/partners/{p.id}", {"currency": "USD"}), 409, "conflict")


def test_unknown_currency_is_refused(api: Live) -> None:
    doc = problem(
        api.operator.post("/v1/admin/partners", {"name": "X", "currency": "ZZZ"}),
        422,
        "validation",
    )
    assert doc["errors"][0]["path"] == "$.currency"


def test_rate_cards_are_versions(api: Live) -> None:
    p = api.partner("EUR")
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat().replace("+00:00", "Z")
    body = {
        "earn_points_per_unit": "2",
        "issue_price_per_point": "0.012",
        "burn_value_per_point": "0.01",
        "reimburse_price_per_point": "0.009",
        "max_burn_share": "0.5",
        "effective_from": later,
    }
    card = ok(api.operator.post(f"/v1/admin/partners/{p.id}/rate-cards", body), 201)
    assert card["partner_id"] == p.id and card["id"].startswith("rc_")
    assert (card["earn_points_per_unit"], card["issue_price_per_point"]) == ("2", "0.012")
    assert card["max_burn_share"] == "0.5"
    listed = ok(api.operator.get(f"/v1/admin/partners/{p.id}/rate-cards"))["data"]
    assert listed[0]["id"] == card["id"] and len(listed) == 2
    # the version in force is still the first one
    assert ok(p.client.get("/v1/me"))["rate_card"]["id"] == listed[1]["id"]
    body["effective_from"] = "2020-01-01T00:00:00Z"
    problem(api.operator.post(f"/v1/admin/partners/{p.id}/rate-cards", body), 422, "validation")
    problem(api.operator.get("/v1/admin/partners/prt_nope/rate-cards"), 404, "not-found")


def test_partner_keys_hmac_and_ed25519(api: Live) -> None:
    p = api.partner("EUR", scopes=("read",))
    ed = api.partner_key(p.id, scopes=("earn", "read"), alg="ed25519")
    me = ok(api.client(ed).get("/v1/me"))
    assert me["key_id"] == ed.key_id and me["partner"]["id"] == p.id
    keys = ok(api.operator.get(f"/v1/admin/partners/{p.id}/keys"))["data"]
    assert [k["key_id"] for k in keys] == [p.key.key_id, ed.key_id]
    assert all("secret" not in k for k in keys)
    assert keys[1]["alg"] == "ed25519" and keys[1]["scopes"] == ["earn", "read"]
    assert keys[0]["last_used_at"] is None and keys[1]["last_used_at"] is not None

    bad = {"alg": "ed25519", "scopes": ["read"], "public_key": "too-short"}
    doc = problem(api.operator.post(f"/v1/admin/partners/{p.id}/keys", bad), 422, "validation")
    assert doc["errors"][0]["path"] == "$.public_key"
    problem(
        api.operator.post(f"/v1/admin/partners/{p.id}/keys", {"alg": "hmac-sha256", "scopes": []}),
        422,
        "validation",
    )
    problem(
        api.operator.post(
            "/v1/admin/partners/prt_nope/keys", {"alg": "hmac-sha256", "scopes": ["read"]}
        ),
        404,
        "not-found",
    )


def test_revoked_key_is_refused_and_revoking_twice_keeps_the_first_time(api: Live) -> None:
    p = api.partner()
    ok(p.client.get("/v1/me"))
    revoked = ok(api.operator.post(f"/v1/admin/keys/{p.key.key_id}/revoke", {}))
    assert revoked["key_id"] == p.key.key_id and revoked["revoked_at"] is not None
    again = ok(api.operator.post(f"/v1/admin/keys/{p.key.key_id}/revoke", {}))
    assert again["revoked_at"] == revoked["revoked_at"]
    doc = problem(p.client.get("/v1/me"), 401, "signature-invalid")
    assert doc["reason"] == "revoked-key"
    problem(api.operator.post("/v1/admin/keys/key_nope/revoke", {}), 404, "not-found")


def test_operator_and_finance_keys(api: Live) -> None:
    operator = api.client(api.role_key("operator"))
    finance = api.client(api.role_key("finance"))
    assert ok(operator.get("/v1/me"))["role"] == "operator"
    assert ok(finance.get("/v1/me"))["role"] == "finance"
    ok(operator.get("/v1/admin/partners"))
    ok(finance.get("/v1/admin/reports/liability"))
    problem(finance.get("/v1/admin/partners"), 403, "forbidden")
    made = ok(api.operator.post("/v1/admin/operator-keys", {"role": "finance"}), 201)
    assert (made["alg"], made["scopes"], made["role"]) == ("hmac-sha256", [], "finance")
    assert isinstance(made["secret"], str) and len(made["secret"]) == 43
    problem(api.operator.post("/v1/admin/operator-keys", {"role": "partner"}), 422, "validation")


def test_bonus_funded_by_a_partner_or_the_coalition(api: Live) -> None:
    p = api.partner()
    member = api.member(p)
    body = {"member_id": member, "points": 50, "reason": "sign-up", "funded_by": p.id}
    txn = ok(api.operator.post("/v1/admin/bonuses", body), 201)
    assert (txn["kind"], txn["points"], txn["partner_id"], txn["balance_after"]) == (
        "bonus",
        50,
        p.id,
        50,
    )
    assert txn["rate_card_id"] is not None and txn["amount"] is None
    body |= {"funded_by": "coalition", "points": 25}
    txn = ok(api.operator.post("/v1/admin/bonuses", body), 201)
    assert (txn["partner_id"], txn["rate_card_id"], txn["balance_after"]) == (None, None, 75)
    body["funded_by"] = "prt_nope"
    problem(api.operator.post("/v1/admin/bonuses", body), 422, "validation")
    body |= {"funded_by": "coalition", "member_id": "mem_ghost"}
    problem(api.operator.post("/v1/admin/bonuses", body), 404, "unknown-member")


def test_adjustments_add_and_take(api: Live) -> None:
    p = api.partner()
    member = api.member(p, 100)
    up = ok(
        api.operator.post(
            "/v1/admin/adjustments", {"member_id": member, "points": 20, "reason": "goodwill"}
        ),
        201,
    )
    assert (up["kind"], up["points"], up["balance_after"]) == ("adjustment", 20, 120)
    down = ok(
        api.operator.post(
            "/v1/admin/adjustments", {"member_id": member, "points": -120, "reason": "fraud"}
        ),
        201,
    )
    assert (down["points"], down["balance_after"]) == (120, 0)
    problem(
        api.operator.post(
            "/v1/admin/adjustments", {"member_id": member, "points": -1, "reason": "x"}
        ),
        409,
        "insufficient-points",
    )
    problem(
        api.operator.post(
            "/v1/admin/adjustments", {"member_id": member, "points": 0, "reason": "x"}
        ),
        422,
        "validation",
    )


def test_liability_report_adds_up(api: Live) -> None:
    before = ok(api.operator.get("/v1/admin/reports/liability"))
    p = api.partner()
    member = api.member(p, 300)
    ok(p.client.post("/v1/burns", {"member_id": member, "reference": unique(), "points": 100}), 201)
    ok(
        api.operator.post(
            "/v1/admin/adjustments", {"member_id": member, "points": -10, "reason": "fix"}
        ),
        201,
    )
    after = ok(api.operator.get("/v1/admin/reports/liability"))
    delta = {k: after[k] - before[k] for k in after if isinstance(after[k], int)}
    assert delta["outstanding_points"] == 190
    assert (delta["earned_points"], delta["redeemed_points"], delta["adjusted_points"]) == (
        300,
        100,
        -10,
    )
    for report in (before, after):
        assert report["outstanding_points"] == (
            report["issued_points"]
            - report["earn_reversed_points"]
            - report["redeemed_points"]
            + report["burn_reversed_points"]
            - report["expired_points"]
            + report["adjusted_points"]
        )
    past = ok(api.operator.get("/v1/admin/reports/liability", params={"at": before["as_of"]}))
    assert past["outstanding_points"] == before["outstanding_points"]
