"""The service behind Debian's pgbouncer in transaction mode (``COALITION_DATABASE_PGBOUNCER``):
signed earns, burns, holds, balance reads, an idempotent replay and a settlement close all work
while every transaction may land on another of pgbouncer's server connections, and the ledger's
invariants hold. Without the setting the driver's server-side prepared statements collide there
(what the setting is for).

pgbouncer is started by the test on a free loopback port, in front of the test's own database
on the shared PostgreSQL server.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from sqlalchemy import make_url

from coalition.check import run_checks
from coalition.db import make_engine, session_factory, transaction
from tests import pgbouncer, pgservers
from tests.api.conftest import Live, ok, serve, unique
from tests.conftest import _pg_clone, _pg_drop, require_postgres
from tests.pgbouncer import PgBouncer

#: More than psycopg's prepare_threshold (5): every statement of the hot path would be
#: prepared on the server by now.
EARNS = 24


def _take_turns(bouncer: PgBouncer, database: str, prepare_threshold: int | None) -> None:
    """Two clients run the same query in turns, ten times each."""
    conninfo = bouncer.conninfo(database)
    with (
        psycopg.connect(conninfo, autocommit=True, prepare_threshold=prepare_threshold) as a,
        psycopg.connect(conninfo, autocommit=True, prepare_threshold=prepare_threshold) as b,
    ):
        for _ in range(10):
            for conn in (a, b):
                conn.execute("SELECT count(*) FROM members WHERE balance > %s", (0,))


@pytest.fixture(scope="module")
def bounced() -> Iterator[tuple[Live, PgBouncer, str, str]]:
    """The API through pgbouncer, with COALITION_DATABASE_PGBOUNCER on; the direct URL."""
    require_postgres()
    pgservers.require(pgbouncer.available(), "Debian's pgbouncer")
    engine, name = _pg_clone()
    direct = engine.url
    engine.dispose()
    try:
        with PgBouncer.running(direct.host or "127.0.0.1", direct.port or 5432, name) as bouncer:
            via = make_url(bouncer.url(name)).render_as_string(hide_password=False)
            for live in serve(via, "postgres", database_pgbouncer=True):
                yield live, bouncer, name, direct.render_as_string(hide_password=False)
    finally:
        _pg_drop(name)


def test_without_the_setting_prepared_statements_collide_in_transaction_mode(
    bounced: tuple[Live, PgBouncer, str, str],
) -> None:
    _, bouncer, name, _ = bounced
    # psycopg's default: a statement run 5 times is prepared on the server as "_pg3_0"; two
    # clients that take turns on pgbouncer's server connections meet each other's.
    with pytest.raises(psycopg.errors.DatabaseError, match="prepared statement"):
        _take_turns(bouncer, name, prepare_threshold=5)
    # with the setting's effect (no server-side prepare), the same turns all work
    _take_turns(bouncer, name, prepare_threshold=None)


def test_signed_requests_and_a_close_work_through_pgbouncer(
    bounced: tuple[Live, PgBouncer, str, str],
) -> None:
    live, bouncer, _, direct_url = bounced
    partner = live.partner("EUR", scopes=("earn", "burn", "read", "statements"))
    members = [live.member(partner) for _ in range(4)]

    def earn(n: int) -> None:
        body = {
            "member_id": members[n % len(members)],
            "reference": unique("pgb"),
            "amount": "10",
            "currency": "EUR",
        }
        ok(partner.client.post("/v1/earns", body), 201)

    # from several threads: the service's pooled connections share pgbouncer's two
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(earn, range(EARNS)))
    member = members[0]
    key = str(uuid.uuid4())
    burn = {"member_id": member, "reference": unique("burn"), "points": 7}
    first = partner.client.post("/v1/burns", burn, idempotency_key=key)
    again = partner.client.post("/v1/burns", burn, idempotency_key=key)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true" and again.content == first.content
    held = ok(
        partner.client.post(
            "/v1/holds", {"member_id": member, "reference": unique("hold"), "points": 5}
        ),
        201,
    )
    ok(partner.client.post(f"/v1/holds/{held['id']}/capture", {}), 200)
    per_member = EARNS // len(members) * 10
    balance = ok(partner.client.get(f"/v1/members/{member}/balance"))
    assert balance["available"] == per_member - 7 - 5
    listed = ok(partner.client.get("/v1/transactions", params={"member_id": member}))
    assert len(listed["data"]) == EARNS // len(members) + 2

    cut_off = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    closed = ok(live.operator.post("/v1/admin/settlement/close", {"cut_off": cut_off}), 201)
    (statement,) = [s for s in closed["statements"] if s["partner_id"] == partner.id]
    assert ok(partner.client.get(f"/v1/statements/{statement['id']}"))["id"] == statement["id"]

    assert "prepared statement" not in bouncer.log()
    engine = make_engine(direct_url)
    try:
        with transaction(session_factory(engine)) as s:
            assert [f for f in run_checks(s) if not f.ok] == []
    finally:
        engine.dispose()
