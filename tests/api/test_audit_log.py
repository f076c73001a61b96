"""The audit log records every operator and finance action (who, key, what, when, from where,
outcome), failures included; operators list it paged and filtered; it is append-only and
never holds a secret."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.api.conftest import Client, Live, ok, problem, unique


def audit_of(live: Live, key_id: str, **params: Any) -> list[dict[str, Any]]:
    page = ok(live.operator.get("/v1/admin/audit", params={"key_id": key_id, **params}))
    assert isinstance(page["data"], list)
    return page["data"]


def test_operator_and_finance_actions_are_recorded_with_their_outcome(api: Live) -> None:
    operator = api.client(api.role_key("operator"))
    finance = api.client(api.role_key("finance"))
    assert operator.key is not None and finance.key is not None
    made = ok(operator.post("/v1/admin/partners", {"name": unique(), "currency": "EUR"}), 201)
    problem(operator.post("/v1/admin/partners", {"name": "", "currency": "EUR"}), 422, "validation")
    again = {"name": unique(), "currency": "EUR"}
    ok(operator.post("/v1/admin/partners", again, idempotency_key="same-key"), 201)
    replay = operator.post("/v1/admin/partners", again, idempotency_key="same-key")
    assert replay.headers["Idempotent-Replayed"] == "true"
    problem(operator.get("/v1/admin/partners/prt_%00"), 422, "validation")
    ok(finance.get("/v1/admin/reports/liability"))
    problem(finance.post("/v1/admin/partners", again), 403, "forbidden")

    events = audit_of(api, operator.key.key_id)
    assert [(e["action"].split("?")[0], e["status"], e["outcome"]) for e in events] == [
        ("GET /v1/admin/partners/prt_%00", 422, "validation"),
        ("POST /v1/admin/partners", 201, "replayed"),
        ("POST /v1/admin/partners", 201, "ok"),
        ("POST /v1/admin/partners", 422, "validation"),
        ("POST /v1/admin/partners", 201, "ok"),
    ]
    assert {e["role"] for e in events} == {"operator"}
    assert {e["source_address"] for e in events} == {"127.0.0.1"}
    assert all(e["request_id"].startswith("req_") and e["at"] for e in events)
    assert made["id"] not in str(events), "bodies and responses are not recorded"
    assert [(e["action"], e["outcome"]) for e in audit_of(api, finance.key.key_id)] == [
        ("POST /v1/admin/partners", "forbidden"),
        ("GET /v1/admin/reports/liability", "ok"),
    ]


def test_partner_keys_are_not_audited(api: Live) -> None:
    partner = api.partner()
    ok(partner.client.get("/v1/me"))
    assert audit_of(api, partner.key.key_id) == []


def test_the_audit_log_is_paged_newest_first_and_filtered(api: Live) -> None:
    operator = api.client(api.role_key("operator"))
    assert operator.key is not None
    for _ in range(5):
        ok(operator.get("/v1/admin/partners", params={"limit": 1}))
    problem(operator.get("/v1/admin/partners", params={"limit": 0}), 422, "validation")
    first = ok(
        api.operator.get("/v1/admin/audit", params={"key_id": operator.key.key_id, "limit": 4})
    )
    assert first["has_more"] and len(first["data"]) == 4
    rest = ok(
        api.operator.get(
            "/v1/admin/audit",
            params={"key_id": operator.key.key_id, "limit": 4, "cursor": first["next_cursor"]},
        )
    )
    assert not rest["has_more"] and len(rest["data"]) == 2
    ids = [e["id"] for e in first["data"] + rest["data"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 6
    failed = audit_of(api, operator.key.key_id, outcome="validation")
    assert [e["status"] for e in failed] == [422]
    assert audit_of(api, operator.key.key_id, role="finance") == []
    times = [e["at"] for e in first["data"]]
    assert audit_of(api, operator.key.key_id, until=times[-1]) == rest["data"]


def test_only_operators_read_the_audit_log(api: Live) -> None:
    finance = api.client(api.role_key("finance"))
    problem(finance.get("/v1/admin/audit"), 403, "forbidden")
    problem(Client(api.base_url, None).get("/v1/admin/audit"), 401, "signature-invalid")


def test_the_audit_log_never_holds_a_secret(api: Live) -> None:
    operator = api.client(api.role_key("operator"))
    made = ok(operator.post("/v1/admin/operator-keys", {"role": "finance"}), 201)
    partner = ok(operator.post("/v1/admin/partners", {"name": unique(), "currency": "EUR"}), 201)
    key = ok(
        operator.post(
            f"/v1/admin/partners/{partner['id']}/keys", {"alg": "hmac-sha256", "scopes": ["read"]}
        ),
        201,
    )
    with api.engine.connect() as conn:
        stored = " ".join(
            str(v) for row in conn.execute(text("SELECT * FROM audit_events")) for v in row
        )
    assert made["secret"] not in stored and key["secret"] not in stored
    assert "Signature" not in stored


def test_the_audit_log_is_append_only(api: Live) -> None:
    ok(api.operator.get("/v1/me"))
    for statement in ("UPDATE audit_events SET outcome = 'ok'", "DELETE FROM audit_events"):
        with pytest.raises(DBAPIError, match="append-only"), api.engine.begin() as conn:
            conn.execute(text(statement))
