"""Idempotency-Key on every POST: replays, reuse with another request, a key in use only while
its request really runs (PostgreSQL), a crashed request's key free at once, scope per key
owner, the store's unique key and purge, and a race of identical requests on PostgreSQL that
makes exactly one transaction."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
import requests
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from coalition import idempotency as store
from coalition.db import session_factory, transaction
from coalition.errors import IdempotencyKeyReused
from coalition.idempotency import IdempotencyRecord
from coalition.models import Transaction
from tests.api.conftest import Client, Live, Partner, ok, problem, unique
from tests.conftest import Db


def _earn(p: Partner, member: str, amount: str = "10", ref: str | None = None) -> dict[str, Any]:
    return {
        "member_id": member,
        "reference": ref or unique("e"),
        "amount": amount,
        "currency": p.currency,
    }


def _count(live: Live, partner_id: str) -> int:
    with transaction(session_factory(live.engine)) as s:
        return int(s.scalar(select(func.count()).where(Transaction.partner_id == partner_id)) or 0)


def test_a_repeat_returns_the_first_response_marked_replayed(api: Live) -> None:
    p = api.partner()
    member = api.member(p)
    key, body = str(uuid.uuid4()), _earn(p, member)
    first = p.client.post("/v1/earns", body, idempotency_key=key)
    again = p.client.post("/v1/earns", body, idempotency_key=key)
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert _count(api, p.id) == 1


def _stored_as(live: Live, key: str) -> tuple[bytes | None, str | None]:
    with transaction(session_factory(live.engine)) as s:
        row = s.execute(
            select(
                IdempotencyRecord.response_body, IdempotencyRecord.response_transaction_id
            ).where(IdempotencyRecord.key == key)
        ).one()
        return (None if row[0] is None else bytes(row[0]), row[1])


def test_a_transaction_is_replayed_byte_for_byte_after_it_was_reversed_and_its_member_moved_on(
    api: Live,
) -> None:
    # A response that is a transaction is kept as the transaction's id and rendered again from
    # its row: what changes afterwards (a reversal, the member's balance, the rate card) shows
    # in nothing a replay says.
    p = api.partner(scopes=("earn", "burn", "read"))
    member = api.member(p, 500)
    offset = datetime.now(UTC).astimezone(timezone(timedelta(hours=2))) - timedelta(minutes=1)
    earn = {**_earn(p, member, "40"), "occurred_at": offset.isoformat()}
    hold = ok(
        p.client.post("/v1/holds", {"member_id": member, "reference": unique(), "points": 30}), 201
    )
    sent: dict[str, tuple[str, dict[str, Any]]] = {
        "earn": ("/v1/earns", earn),
        "burn": ("/v1/burns", {"member_id": member, "reference": unique(), "points": 20}),
        "capture": (f"/v1/holds/{hold['id']}/capture", {"points": 10}),
        "bonus": (
            "/v1/admin/bonuses",
            {"member_id": member, "points": 5, "reason": "welcome", "funded_by": p.id},
        ),
    }
    keys = {name: str(uuid.uuid4()) for name in sent}
    clients = {name: api.operator if name == "bonus" else p.client for name in sent}
    first = {
        name: clients[name].post(path, body, idempotency_key=keys[name])
        for name, (path, body) in sent.items()
    }
    assert [r.status_code for r in first.values()] == [201, 201, 200, 201]
    earned = first["earn"].json()
    assert earned["occurred_at"].endswith("Z")  # times in UTC, however they were given
    sent["reversal"] = (f"/v1/transactions/{earned['id']}/reversals", {"reference": unique()})
    keys["reversal"], clients["reversal"] = str(uuid.uuid4()), p.client
    reversal = p.client.post(*sent["reversal"], idempotency_key=keys["reversal"])
    first["reversal"] = reversal
    assert ok(reversal, 201)["reverses"] == earned["id"]
    for name, response in first.items():
        assert _stored_as(api, keys[name]) == (None, response.json()["id"])
    # the member moves on; the partner's rate card changes
    ok(p.client.post("/v1/earns", _earn(p, member, "70")), 201)
    card = {
        "earn_points_per_unit": "3",
        "issue_price_per_point": "0.02",
        "burn_value_per_point": "0.01",
        "reimburse_price_per_point": "0.009",
    }
    ok(api.operator.post(f"/v1/admin/partners/{p.id}/rate-cards", card), 201)
    # the end of the retention: a record about to be forgotten replays the same
    with transaction(session_factory(api.engine)) as s:
        s.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.key.in_(list(keys.values())))
            .values(expires_at=datetime.now(UTC) + timedelta(minutes=1))
        )
    for name, (path, body) in sent.items():
        again = clients[name].post(path, body, idempotency_key=keys[name])
        assert again.status_code == first[name].status_code, name
        assert again.content == first[name].content, name
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.headers["Content-Type"] == first[name].headers["Content-Type"]
    # a problem is still kept whole
    refused_key = str(uuid.uuid4())
    burn_too_much = {"member_id": member, "reference": unique(), "points": 10**6}
    problem(
        p.client.post("/v1/burns", burn_too_much, idempotency_key=refused_key),
        409,
        "insufficient-points",
    )
    stored_body, txn = _stored_as(api, refused_key)
    assert stored_body is not None and txn is None


def test_the_same_key_with_another_body_or_path_is_reused(api: Live) -> None:
    p = api.partner()
    member = api.member(p, 100)
    key = str(uuid.uuid4())
    ok(p.client.post("/v1/earns", _earn(p, member, "10"), idempotency_key=key), 201)
    doc = problem(
        p.client.post("/v1/earns", _earn(p, member, "11"), idempotency_key=key),
        422,
        "idempotency-key-reused",
    )
    assert "POST /v1/earns" in doc["detail"]
    burn = {"member_id": member, "reference": unique(), "points": 1}
    problem(p.client.post("/v1/burns", burn, idempotency_key=key), 422, "idempotency-key-reused")


def test_a_post_without_a_valid_key_is_400(api: Live) -> None:
    p = api.partner()
    member = api.member(p)
    problem(
        p.client.post("/v1/earns", _earn(p, member), idempotency_key=None),
        400,
        "idempotency-key-missing",
    )
    for bad in ("", "has space", "x" * 256, "caf\u00e9"):
        headers = {"Idempotency-Key": bad}
        response = p.client.post(
            "/v1/earns", _earn(p, member), idempotency_key=None, headers=headers
        )
        problem(response, 400, "idempotency-key-missing")
    ok(p.client.post("/v1/earns", _earn(p, member), idempotency_key="x" * 255), 201)
    assert _count(api, p.id) == 1


def test_a_problem_is_stored_and_replayed_too(api: Live) -> None:
    p = api.partner()
    member = api.member(p, 10)
    key = str(uuid.uuid4())
    burn = {"member_id": member, "reference": unique(), "points": 20}
    first = p.client.post("/v1/burns", burn, idempotency_key=key)
    problem(first, 409, "insufficient-points")
    ok(p.client.post("/v1/earns", _earn(p, member, "100")), 201)
    again = p.client.post("/v1/burns", burn, idempotency_key=key)
    assert again.status_code == 409 and again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Content-Type"].startswith("application/problem+json")


def test_a_rejected_body_is_stored_so_the_key_cannot_carry_another(api: Live) -> None:
    p = api.partner()
    member = api.member(p)
    key = str(uuid.uuid4())
    problem(p.client.post("/v1/earns", content=b"{nope", idempotency_key=key), 422, "validation")
    replay = p.client.post("/v1/earns", content=b"{nope", idempotency_key=key)
    assert replay.status_code == 422 and replay.headers["Idempotent-Replayed"] == "true"
    problem(
        p.client.post("/v1/earns", _earn(p, member), idempotency_key=key),
        422,
        "idempotency-key-reused",
    )


def test_keys_are_scoped_per_owner(api: Live) -> None:
    a, b = api.partner(), api.partner()
    member = api.member(a)
    key = str(uuid.uuid4())
    body = _earn(a, member)
    first = ok(a.client.post("/v1/earns", body, idempotency_key=key), 201)
    second = ok(b.client.post("/v1/earns", body, idempotency_key=key), 201)
    assert first["partner_id"] == a.id and second["partner_id"] == b.id
    # operator keys share one owner, "operator": another operator key gets the replay
    made = {"name": "Scoped", "currency": "EUR"}
    first_op = api.operator.post("/v1/admin/partners", made, idempotency_key=key)
    assert first_op.status_code == 201
    other_operator = api.client(api.role_key("operator"))
    replay = other_operator.post("/v1/admin/partners", made, idempotency_key=key)
    assert replay.content == first_op.content and replay.headers["Idempotent-Replayed"] == "true"


def _hold_key(live: Live, owner: str, key: str) -> psycopg.Connection[Any]:
    """A connection whose open transaction holds ``key`` as a running request would."""
    url = live.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = psycopg.connect(url)
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{owner}\n{key}",))
    return conn


def _wait_until_gone(live: Live, backend_pid: int) -> None:
    """Until the server has ended the backend of a dropped connection (bounded)."""
    url = live.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(2000):
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend_pid,)
            ).fetchone()
            if row is not None and row[0] == 0:
                return
    raise AssertionError(f"backend {backend_pid} still there")


def test_a_key_whose_request_is_running_is_in_use_and_free_once_it_ends(live_pg: Live) -> None:
    p = live_pg.partner()
    member = live_pg.member(p)
    key, body = str(uuid.uuid4()), json.dumps(_earn(p, member)).encode()
    running = _hold_key(live_pg, p.id, key)
    try:
        response = p.client.post("/v1/earns", content=body, idempotency_key=key)
        problem(response, 409, "idempotency-key-in-use")
        assert response.headers["Retry-After"] == "1"
        assert _count(live_pg, p.id) == 0
    finally:
        running.rollback()  # the running request ended without an effect
        running.close()
    first = p.client.post("/v1/earns", content=body, idempotency_key=key)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    assert _count(live_pg, p.id) == 1


def test_a_request_whose_process_died_frees_its_key_at_once(live_pg: Live) -> None:
    p = live_pg.partner()
    member = live_pg.member(p)
    key, body = str(uuid.uuid4()), json.dumps(_earn(p, member)).encode()
    dying = _hold_key(live_pg, p.id, key)
    backend = dying.info.backend_pid
    dying.pgconn.finish()  # the connection drops as it does when its process is killed
    _wait_until_gone(live_pg, backend)
    first = p.client.post("/v1/earns", content=body, idempotency_key=key)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    again = p.client.post("/v1/earns", content=body, idempotency_key=key)
    assert again.content == first.content and again.headers["Idempotent-Replayed"] == "true"
    assert _count(live_pg, p.id) == 1


def test_identical_requests_racing_make_one_transaction(live_pg: Live) -> None:
    p = live_pg.partner()
    member = live_pg.member(p)
    key, body = str(uuid.uuid4()), json.dumps(_earn(p, member)).encode()
    parallel = 20
    barrier = threading.Barrier(parallel)

    def send(_: int) -> requests.Response:
        client = Client(live_pg.base_url, p.key)
        barrier.wait(timeout=30)
        return client.post("/v1/earns", content=body, idempotency_key=key)

    with ThreadPoolExecutor(parallel) as pool:
        responses = list(pool.map(send, range(parallel)))
    created = [r for r in responses if r.status_code == 201]
    in_use = [r for r in responses if r.status_code == 409]
    assert len(created) + len(in_use) == parallel, [r.text for r in responses]
    for r in in_use:
        problem(r, 409, "idempotency-key-in-use")
    originals = [r for r in created if "Idempotent-Replayed" not in r.headers]
    assert len(originals) == 1
    assert all(r.content == originals[0].content for r in created)
    assert _count(live_pg, p.id) == 1


# --- the store -----------------------------------------------------------------------------


def _save(db: Db, key: str, now: datetime, request: bytes = b"h1", body: bytes = b"{}") -> None:
    with transaction(db.sessions) as s:
        assert store.claim(s, owner="prt_x", key=key, request_hash=request, now=now) is None
        store.save(
            s,
            owner="prt_x",
            key=key,
            request_hash=request,
            method="POST",
            path="/v1/earns",
            status=201,
            body=body,
            now=now,
        )


def _lookup(db: Db, key: str, now: datetime, request: bytes = b"h1") -> store.StoredResponse | None:
    with transaction(db.sessions) as s:
        return store.lookup(s, owner="prt_x", key=key, request_hash=request, now=now)


def test_store_replays_the_saved_response_and_refuses_another_request(db: Db) -> None:
    t0 = datetime(2026, 1, 5, 9, tzinfo=UTC)
    _save(db, "k", t0, body=b'{"ok":1}')
    assert _lookup(db, "k", t0) == store.StoredResponse(201, b'{"ok":1}')
    with pytest.raises(IdempotencyKeyReused):
        _lookup(db, "k", t0, request=b"h2")


def test_store_keeps_a_second_save_of_one_key_out(db: Db) -> None:
    t0 = datetime(2026, 1, 5, 9, tzinfo=UTC)
    _save(db, "k", t0)
    with pytest.raises(IntegrityError), transaction(db.sessions) as s:
        store.save(
            s,
            owner="prt_x",
            key="k",
            request_hash=b"h1",
            method="POST",
            path="/v1/earns",
            status=201,
            body=b"{}",
            now=t0,
        )


def test_store_purges_after_retention_only(db: Db) -> None:
    t0 = datetime(2026, 1, 5, 9, tzinfo=UTC)
    _save(db, "done", t0)
    _save(db, "later", t0 + store.RETENTION)
    at = t0 + store.RETENTION + timedelta(seconds=1)
    with transaction(db.sessions) as s:
        assert store.purge(s, t0 + store.RETENTION - timedelta(seconds=1)) == 0
        assert store.purge(s, at) == 1
        keys = set(s.scalars(select(IdempotencyRecord.key)))
    assert keys == {"later"}


def test_store_forgets_a_key_past_its_retention_before_the_purge(db: Db) -> None:
    t0 = datetime(2026, 1, 5, 9, tzinfo=UTC)
    _save(db, "k", t0)
    at = t0 + store.RETENTION
    # the key is new again, even with another request, and its new response is kept
    _save(db, "k", at, request=b"new", body=b'{"new":1}')
    assert _lookup(db, "k", at, request=b"new") == store.StoredResponse(201, b'{"new":1}')


def test_earns_racing_with_one_reference_make_one_transaction_and_name_it(live_pg: Live) -> None:
    p = live_pg.partner()
    member = live_pg.member(p)
    body = json.dumps(_earn(p, member, ref=unique("race"))).encode()
    parallel = 12
    barrier = threading.Barrier(parallel)

    def send(_: int) -> requests.Response:
        client = Client(live_pg.base_url, p.key)
        barrier.wait(timeout=30)
        return client.post("/v1/earns", content=body, idempotency_key=str(uuid.uuid4()))

    with ThreadPoolExecutor(parallel) as pool:
        responses = list(pool.map(send, range(parallel)))
    created = [r for r in responses if r.status_code == 201]
    assert len(created) == 1, [r.text for r in responses]
    winner = created[0].json()["id"]
    for r in responses:
        if r is not created[0]:
            assert problem(r, 409, "duplicate-reference")["transaction_id"] == winner
    assert _count(live_pg, p.id) == 1
