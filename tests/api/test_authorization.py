"""The authorization matrix: every endpoint in scope x every kind of caller gives the
documented answer: 401 with the failed check's ``reason``, 403 ``forbidden``, 404 for another
partner's objects, or success."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.api.conftest import Client, Key, Live, Partner, StaleAuth, ok, problem, unique

_days = itertools.count(1)


@dataclass
class World:
    """Partner A's objects, which the callers try to reach."""

    live: Live
    a: Partner
    member: str
    earn_id: str
    burn_id: str

    def hold(self) -> str:
        body = {"member_id": self.member, "reference": unique("h"), "points": 1}
        return str(ok(self.a.client.post("/v1/holds", body), 201)["id"])

    def partner_id(self) -> str:
        made = ok(
            self.live.operator.post("/v1/admin/partners", {"name": "P", "currency": "EUR"}), 201
        )
        return str(made["id"])

    def throwaway_key(self) -> str:
        return self.live.partner_key(self.a.id, scopes=("read",)).key_id


Make = Callable[[World], tuple[str, Any]]


@dataclass(frozen=True)
class Endpoint:
    """One endpoint: who may call it, how to build a successful call, what success is."""

    method: str
    access: str  # any | earn | burn | read | earn+burn | operator | reports | none
    make: Make
    success: int = 200
    owned: bool = False  # names an object of partner A: another partner gets 404


def _earn_body(w: World) -> dict[str, Any]:
    return {"member_id": w.member, "reference": unique(), "amount": "1", "currency": "EUR"}


def _future(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat().replace("+00:00", "Z")


RATE_CARD = {
    "earn_points_per_unit": "1",
    "issue_price_per_point": "0.01",
    "burn_value_per_point": "0.01",
    "reimburse_price_per_point": "0.008",
}

ENDPOINTS: dict[str, Endpoint] = {
    "GET /v1/health": Endpoint("GET", "none", lambda w: ("/v1/health", None)),
    "GET /v1/signing-keys": Endpoint("GET", "none", lambda w: ("/v1/signing-keys", None)),
    "GET /v1/me": Endpoint("GET", "any", lambda w: ("/v1/me", None)),
    "POST /v1/members": Endpoint("POST", "earn", lambda w: ("/v1/members", {}), 201),
    "GET /v1/members/{id}/balance": Endpoint(
        "GET", "read", lambda w: (f"/v1/members/{w.member}/balance", None)
    ),
    "POST /v1/earns": Endpoint("POST", "earn", lambda w: ("/v1/earns", _earn_body(w)), 201),
    "POST /v1/burns": Endpoint(
        "POST",
        "burn",
        lambda w: ("/v1/burns", {"member_id": w.member, "reference": unique(), "points": 1}),
        201,
    ),
    "POST /v1/holds": Endpoint(
        "POST",
        "burn",
        lambda w: ("/v1/holds", {"member_id": w.member, "reference": unique(), "points": 1}),
        201,
    ),
    "GET /v1/holds/{id}": Endpoint(
        "GET", "read", lambda w: (f"/v1/holds/{w.hold()}", None), owned=True
    ),
    "POST /v1/holds/{id}/capture": Endpoint(
        "POST", "burn", lambda w: (f"/v1/holds/{w.hold()}/capture", {}), owned=True
    ),
    "POST /v1/holds/{id}/void": Endpoint(
        "POST", "burn", lambda w: (f"/v1/holds/{w.hold()}/void", {}), owned=True
    ),
    "POST /v1/transactions/{id}/reversals": Endpoint(
        "POST",
        "earn+burn",
        lambda w: (f"/v1/transactions/{w.earn_id}/reversals", {"reference": unique(), "points": 1}),
        201,
        owned=True,
    ),
    "GET /v1/transactions/{id}": Endpoint(
        "GET", "read", lambda w: (f"/v1/transactions/{w.earn_id}", None), owned=True
    ),
    "GET /v1/transactions": Endpoint("GET", "read", lambda w: ("/v1/transactions", None)),
    "POST /v1/admin/partners": Endpoint(
        "POST", "operator", lambda w: ("/v1/admin/partners", {"name": "N", "currency": "EUR"}), 201
    ),
    "GET /v1/admin/partners": Endpoint("GET", "operator", lambda w: ("/v1/admin/partners", None)),
    "GET /v1/admin/partners/{id}": Endpoint(
        "GET", "operator", lambda w: (f"/v1/admin/partners/{w.a.id}", None)
    ),
    "PATCH /v1/admin/partners/{id}": Endpoint(
        "PATCH", "operator", lambda w: (f"/v1/admin/partners/{w.partner_id()}", {"name": "M"})
    ),
    "POST /v1/admin/partners/{id}/rate-cards": Endpoint(
        "POST",
        "operator",
        lambda w: (
            f"/v1/admin/partners/{w.a.id}/rate-cards",
            RATE_CARD | {"effective_from": _future(next(_days))},
        ),
        201,
    ),
    "GET /v1/admin/partners/{id}/rate-cards": Endpoint(
        "GET", "operator", lambda w: (f"/v1/admin/partners/{w.a.id}/rate-cards", None)
    ),
    "POST /v1/admin/partners/{id}/keys": Endpoint(
        "POST",
        "operator",
        lambda w: (
            f"/v1/admin/partners/{w.a.id}/keys",
            {"alg": "hmac-sha256", "scopes": ["read"]},
        ),
        201,
    ),
    "GET /v1/admin/partners/{id}/keys": Endpoint(
        "GET", "operator", lambda w: (f"/v1/admin/partners/{w.a.id}/keys", None)
    ),
    "POST /v1/admin/keys/{id}/revoke": Endpoint(
        "POST", "operator", lambda w: (f"/v1/admin/keys/{w.throwaway_key()}/revoke", {})
    ),
    "POST /v1/admin/operator-keys": Endpoint(
        "POST", "operator", lambda w: ("/v1/admin/operator-keys", {"role": "finance"}), 201
    ),
    "POST /v1/admin/bonuses": Endpoint(
        "POST",
        "operator",
        lambda w: (
            "/v1/admin/bonuses",
            {"member_id": w.member, "points": 1, "reason": "r", "funded_by": "coalition"},
        ),
        201,
    ),
    "POST /v1/admin/adjustments": Endpoint(
        "POST",
        "operator",
        lambda w: ("/v1/admin/adjustments", {"member_id": w.member, "points": 1, "reason": "r"}),
        201,
    ),
    "GET /v1/admin/reports/liability": Endpoint(
        "GET", "reports", lambda w: ("/v1/admin/reports/liability", None)
    ),
    "POST /v1/console-links": Endpoint(
        "POST", "any partner", lambda w: ("/v1/console-links", {}), 201
    ),
    "POST /v1/members/{id}/portal-links": Endpoint(
        "POST", "read", lambda w: (f"/v1/members/{w.member}/portal-links", {}), 201
    ),
    "POST /v1/admin/members/{id}/portal-links": Endpoint(
        "POST", "operator", lambda w: (f"/v1/admin/members/{w.member}/portal-links", {}), 201
    ),
}

PARTNER_ACCESS = {"any", "earn", "burn", "read", "earn+burn", "any partner"}


@pytest.fixture(scope="module")
def world(live: Live) -> World:
    a = live.partner("EUR", scopes=("earn", "burn", "read"))
    member = live.member(a, 100_000)
    earn_id = ok(
        a.client.post(
            "/v1/earns",
            {"member_id": member, "reference": unique(), "amount": "1000", "currency": "EUR"},
        ),
        201,
    )["id"]
    burn_id = ok(
        a.client.post("/v1/burns", {"member_id": member, "reference": unique(), "points": 5}), 201
    )["id"]
    return World(live, a, member, earn_id, burn_id)


@pytest.fixture(scope="module")
def callers(live: Live, world: World) -> dict[str, Client]:
    a = world.a
    revoked = live.partner_key(a.id, scopes=("earn", "burn", "read"))
    ok(live.operator.post(f"/v1/admin/keys/{revoked.key_id}/revoke", {}))
    other = live.partner("EUR", scopes=("earn", "burn", "read"))
    return {
        "partner": a.client,
        "unsigned": live.client(None),
        "bad signature": live.client(Key(a.key.key_id, "hmac-sha256", secrets.token_bytes(32))),
        "stale": live.client(a.key, StaleAuth),
        "unknown key": live.client(Key("key_unknown", "hmac-sha256", secrets.token_bytes(32))),
        "revoked key": live.client(revoked),
        "other partner": other.client,
        "missing scope": live.client(live.partner_key(a.id, scopes=("webhooks",))),
        "operator": live.operator,
        "finance": live.client(live.role_key("finance")),
    }


REASONS = {
    "unsigned": "missing-signature",
    "bad signature": "bad-signature",
    "stale": "stale",
    "unknown key": "unknown-key",
    "revoked key": "revoked-key",
}


def expected(endpoint: Endpoint, caller: str) -> tuple[int, str | None]:
    """The documented answer: (status, problem kind or None for success)."""
    if endpoint.access == "none":
        return endpoint.success, None
    if caller in REASONS:
        return 401, "signature-invalid"
    if endpoint.access == "any":
        return endpoint.success, None
    if endpoint.access in PARTNER_ACCESS:
        if caller in ("operator", "finance") or (
            caller == "missing scope" and endpoint.access != "any partner"
        ):
            return 403, "forbidden"
        if caller == "other partner" and endpoint.owned:
            return 404, "not-found"
        return endpoint.success, None
    if caller == "operator" or (caller == "finance" and endpoint.access == "reports"):
        return endpoint.success, None
    return 403, "forbidden"


CALLERS = [
    "partner",
    "unsigned",
    "bad signature",
    "stale",
    "unknown key",
    "revoked key",
    "other partner",
    "missing scope",
    "operator",
    "finance",
]


@pytest.mark.parametrize("name", list(ENDPOINTS))
def test_every_caller_gets_the_documented_answer(
    name: str, world: World, callers: dict[str, Client]
) -> None:
    endpoint = ENDPOINTS[name]
    for caller in CALLERS:
        path, body = endpoint.make(world)
        response = callers[caller].request(endpoint.method, path, json=body)
        status, kind = expected(endpoint, caller)
        if kind is None:
            assert response.status_code == status, (caller, response.text)
            continue
        doc = problem(response, status, kind)
        if caller in REASONS:
            assert doc["reason"] == REASONS[caller], (caller, doc)
            assert response.headers.get("WWW-Authenticate") == "Signature"


def test_another_partner_lists_none_of_our_transactions(
    world: World, callers: dict[str, Client]
) -> None:
    seen = ok(callers["other partner"].get("/v1/transactions", params={"limit": 500}))["data"]
    assert all(t["partner_id"] != world.a.id for t in seen)
    ours = ok(world.a.client.get("/v1/transactions", params={"limit": 500}))["data"]
    assert {world.earn_id, world.burn_id} <= {t["id"] for t in ours}


def test_reversal_needs_the_scope_of_the_original(live: Live, world: World) -> None:
    burn_only = live.client(live.partner_key(world.a.id, scopes=("burn",)))
    earn_only = live.client(live.partner_key(world.a.id, scopes=("earn",)))
    body = {"reference": unique(), "points": 1}
    problem(burn_only.post(f"/v1/transactions/{world.earn_id}/reversals", body), 403, "forbidden")
    problem(earn_only.post(f"/v1/transactions/{world.burn_id}/reversals", body), 403, "forbidden")
    ok(earn_only.post(f"/v1/transactions/{world.earn_id}/reversals", body), 201)
    ok(burn_only.post(f"/v1/transactions/{world.burn_id}/reversals", {"reference": unique()}), 201)
