"""Webhook endpoint management over HTTP: scope ``webhooks``, the secret shown once, another
partner's endpoint is 404, limits, and the outbound-safety check of the URL (SSRF)."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest

from partners.webhooks.events import SUBSCRIBABLE, EventType
from tests.api.conftest import Live, Partner, ok, problem

SCOPES = ("earn", "burn", "read", "webhooks")
#: A public address as a literal: it resolves without DNS (no network in the tests).
PUBLIC_URL = "https://93.184.215.14/coalition/hooks"
BASE = "/v1/webhook-endpoints"


def create(partner: Partner, **fields: Any) -> dict[str, Any]:
    made: dict[str, Any] = ok(partner.client.post(BASE, {"url": PUBLIC_URL, **fields}), 201)
    return made


def test_an_endpoint_is_created_with_a_secret_shown_once(api: Live) -> None:
    shop = api.partner(scopes=SCOPES)
    made = create(shop, events=["transaction.earned"], description="orders")
    secret = made["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert (made["url"], made["events"], made["disabled"]) == (
        PUBLIC_URL,
        ["transaction.earned"],
        False,
    )
    got = ok(shop.client.get(f"{BASE}/{made['id']}"))
    assert "secret" not in got
    assert got["id"] == made["id"]
    listed = ok(shop.client.get(BASE))["data"]
    assert [e["id"] for e in listed] == [made["id"]]
    assert all("secret" not in e for e in listed)


def test_endpoints_need_the_webhooks_scope(api: Live) -> None:
    shop = api.partner(scopes=("earn", "read"))
    problem(shop.client.post(BASE, {"url": PUBLIC_URL}), 403, "forbidden")
    problem(shop.client.get(BASE), 403, "forbidden")


def test_another_partners_endpoint_is_not_found(api: Live) -> None:
    shop, other = api.partner(scopes=SCOPES), api.partner(scopes=SCOPES)
    made = create(shop)
    path = f"{BASE}/{made['id']}"
    problem(other.client.get(path), 404, "not-found")
    problem(other.client.patch(path, {"disabled": True}), 404, "not-found")
    problem(other.client.request("DELETE", path), 404, "not-found")
    problem(other.client.post(f"{path}/rotate-secret", {}), 404, "not-found")
    problem(other.client.post(f"{path}/test", {}), 404, "not-found")
    problem(other.client.get(f"{path}/deliveries"), 404, "not-found")
    assert ok(other.client.get(BASE))["data"] == []
    assert ok(shop.client.get(path))["disabled"] is False


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[fd00::1]/hook",
        "http://localhost:8080/hook",
        "http://[::ffff:127.0.0.1]/hook",
    ],
)
def test_private_addresses_are_refused(api: Live, url: str) -> None:
    shop = api.partner(scopes=SCOPES)
    doc = problem(shop.client.post(BASE, {"url": url}), 422, "validation")
    assert [e["path"] for e in doc["errors"]] == ["$.url"]
    assert ok(shop.client.get(BASE))["data"] == []


@pytest.mark.parametrize(
    "url",
    ["ftp://93.184.215.14/hook", "https://user:pw@93.184.215.14/", "file:///etc/passwd", "x"],
)
def test_only_http_and_https_urls_without_credentials_are_accepted(api: Live, url: str) -> None:
    shop = api.partner(scopes=SCOPES)
    doc = problem(shop.client.post(BASE, {"url": url}), 422, "validation")
    assert [e["path"] for e in doc["errors"]] == ["$.url"]


def test_an_update_is_checked_like_a_registration(api: Live) -> None:
    shop = api.partner(scopes=SCOPES)
    path = f"{BASE}/{create(shop)['id']}"
    doc = problem(shop.client.patch(path, {"url": "http://10.0.0.1/"}), 422, "validation")
    assert [e["path"] for e in doc["errors"]] == ["$.url"]
    changed = ok(shop.client.patch(path, {"events": ["transaction.burned"], "disabled": True}))
    assert (changed["events"], changed["disabled"]) == (["transaction.burned"], True)
    assert changed["disabled_reason"]
    again = ok(shop.client.patch(path, {"events": None, "disabled": False}))
    assert (again["events"], again["disabled"], again["disabled_reason"]) == (None, False, None)
    problem(shop.client.patch(path, {"events": ["nope"]}), 422, "validation")


def test_every_event_of_the_catalogue_but_ping_can_be_subscribed_to(api: Live) -> None:
    shop = api.partner(scopes=SCOPES)
    every = [t.value for t in EventType if t is not EventType.PING]
    assert sorted(create(shop, events=every)["events"]) == sorted(SUBSCRIBABLE) == sorted(every)
    doc = problem(
        shop.client.post(BASE, {"url": PUBLIC_URL, "events": ["ping"]}), 422, "validation"
    )
    assert [e["path"] for e in doc["errors"]] == ["$.events[0]"]


def test_rotation_gives_a_new_secret_and_keeps_the_old_one_for_a_day(api: Live) -> None:
    shop = api.partner(scopes=SCOPES)
    made = create(shop)
    rotated = ok(shop.client.post(f"{BASE}/{made['id']}/rotate-secret", {}))
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != made["secret"]
    expires = dt.datetime.fromisoformat(rotated["previous_secret_expires_at"])
    left = expires - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=23) < left <= dt.timedelta(hours=24)


def test_a_test_ping_is_queued_and_listed_in_the_deliveries(api: Live) -> None:
    shop = api.partner(scopes=SCOPES)
    path = f"{BASE}/{create(shop)['id']}"
    queued = ok(shop.client.post(f"{path}/test", {}), 202)
    assert queued["event_id"].startswith("evt_")
    [delivery] = ok(shop.client.get(f"{path}/deliveries"))["data"]
    assert (delivery["event_id"], delivery["event_type"], delivery["status"]) == (
        queued["event_id"],
        "ping",
        "pending",
    )
    recovered = ok(shop.client.post(f"{path}/recover", {"since": "2026-01-01T00:00:00Z"}), 202)
    assert recovered["deliveries"] == 0


def test_deleting_an_endpoint_removes_it(api: Live) -> None:
    shop = api.partner(scopes=SCOPES)
    path = f"{BASE}/{create(shop)['id']}"
    ok(shop.client.post(f"{path}/test", {}), 202)
    assert ok(shop.client.request("DELETE", path))["url"] == PUBLIC_URL
    problem(shop.client.get(path), 404, "not-found")


def test_a_partner_has_at_most_ten_endpoints(api: Live) -> None:
    shop = api.partner(scopes=SCOPES)
    for _ in range(10):
        create(shop)
    problem(shop.client.post(BASE, {"url": PUBLIC_URL}), 409, "conflict")
    assert len(ok(shop.client.get(BASE))["data"]) == 10


def test_an_earn_over_http_queues_its_event_for_the_partners_endpoint(api: Live) -> None:
    shop = api.partner(scopes=SCOPES)
    path = f"{BASE}/{create(shop)['id']}"
    member = ok(shop.client.post("/v1/members", {}), 201)["member_id"]
    earned = ok(
        shop.client.post(
            "/v1/earns",
            {"member_id": member, "reference": "order-1", "amount": "10", "currency": "EUR"},
        ),
        201,
    )
    [delivery] = ok(shop.client.get(f"{path}/deliveries"))["data"]
    assert (delivery["event_type"], delivery["status"]) == ("transaction.earned", "pending")
    assert earned["id"].startswith("txn_")


def test_an_earn_and_a_burn_keep_their_answer_and_one_event_each_on_replay(api: Live) -> None:
    """The stored response and the event ride the statement that writes the transaction on
    PostgreSQL (coalition.ledger.riders): a retry with the same key replays the answer byte for
    byte and queues no second event."""
    shop = api.partner(scopes=SCOPES)
    path = f"{BASE}/{create(shop)['id']}"
    member = ok(shop.client.post("/v1/members", {}), 201)["member_id"]
    calls = (
        ("/v1/earns", {"member_id": member, "reference": "o-1", "amount": "10", "currency": "EUR"}),
        ("/v1/burns", {"member_id": member, "reference": "o-2", "points": 3}),
    )
    for n, (route, body) in enumerate(calls):
        first = shop.client.post(route, body, idempotency_key=f"key-{n}")
        again = shop.client.post(route, body, idempotency_key=f"key-{n}")
        assert first.status_code == again.status_code == 201
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.content == first.content
    deliveries = ok(shop.client.get(f"{path}/deliveries"))["data"]
    assert sorted(d["event_type"] for d in deliveries) == [
        "transaction.burned",
        "transaction.earned",
    ]
