"""A streaming read replica (``COALITION_REPLICA_DATABASE_URL``), on a real standby made by
``pg_basebackup`` on another port: reports, listings and the console's pages read from it while
it lags by at most ``COALITION_REPLICA_MAX_LAG_S`` and from the primary past that or when it is
out of reach (said once in the log, each way); a partner's reads, and a console page right
after its own form, see their writes (docs/operations.md, "Read replicas").

To see which server answered, the standby's replay is paused (``pg_wal_replay_pause()``): it
keeps the state from before the pause while the primary moves on.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from coalition.db import make_engine, session_factory, transaction
from coalition.errors import NotFound
from coalition.replicas import Reads, Replica
from partners.models import Partner
from partners.rates import create_partner, get_partner
from partners.signin import issue_link
from tests.api.conftest import Live, ok, serve, unique
from tests.ops.conftest import Pair
from tests.pgservers import free_port, wait_until

#: The lag bound of the served app: long enough for a few requests inside it, short enough
#: that the fallback comes quickly.
LAG_S = 4.0
WAIT_S = 30.0
CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


@pytest.fixture(scope="module")
def replicated(pair: Pair) -> Iterator[Live]:
    """The API over the shared pair: writes to the primary, replica reads from the standby."""
    yield from serve(
        pair.url, "postgres", replica_database_url=pair.replica_url, replica_max_lag_s=LAG_S
    )


@contextlib.contextmanager
def replay_paused(pair: Pair) -> Iterator[None]:
    """The standby keeps what it has now until the block ends (then it catches up)."""
    pair.caught_up()
    pair.standby.pause_replay()
    try:
        yield
    finally:
        pair.standby.resume_replay()
    pair.caught_up()


def replica_health(live: Live) -> dict[str, Any]:
    found: dict[str, Any] = ok(requests.get(live.base_url + "/v1/health", timeout=10))["replica"]
    return found


def wait_reads_from(live: Live, where: str) -> dict[str, Any]:
    """Wait until the service sends its replica reads to ``where`` (its health says so)."""
    found: dict[str, Any] = wait_until(
        lambda: (h := replica_health(live))["reads"] == where and h,
        WAIT_S,
        f"replica reads to go to the {where}",
    )
    return found


def outstanding(live: Live) -> int:
    """The liability report's outstanding points (a report: read from the replica)."""
    points: int = ok(live.operator.get("/v1/admin/reports/liability"))["outstanding_points"]
    return points


def console(live: Live, role: str = "operator") -> requests.Session:
    """A browser signed in to the console as ``role`` (through the link's page and button)."""
    with transaction(session_factory(live.engine)) as s:
        token = issue_link(s, role=role, now=datetime.now(UTC)).token
    browser = requests.Session()
    shown = browser.get(f"{live.base_url}/console/sign-in/{token}", timeout=10)
    found = CSRF.search(shown.text)
    assert found is not None, shown.text
    signed_in = browser.post(
        f"{live.base_url}/console/sign-in",
        data={"csrf": found.group(1), "token": token},
        timeout=10,
    )
    assert signed_in.status_code == 200 and "coalition_console" in browser.cookies
    return browser


def partner_names(live: Live) -> set[str]:
    """The names the operator's listing of partners shows (a listing: the replica)."""
    page = ok(live.operator.get("/v1/admin/partners", params={"limit": 500}))
    return {p["name"] for p in page["data"]}


def test_reports_listings_and_console_pages_read_the_replica_until_it_lags_past_the_bound(
    replicated: Live, pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    live = replicated
    browser = console(live)
    live.member(live.partner(), points=100)
    pair.caught_up()
    assert wait_reads_from(live, "replica")["status"] == "ok"
    before = outstanding(live)
    caplog.set_level(logging.INFO, logger="coalition.db")
    with replay_paused(pair):
        newcomer = unique("newcomer")
        made = ok(
            live.operator.post("/v1/admin/partners", {"name": newcomer, "currency": "EUR"}), 201
        )
        assert get_partner_on(pair, made["id"]) is not None  # on the primary, and acknowledged
        with pytest.raises(NotFound):
            get_partner_on_replica(pair, made["id"])
        live.member(live.partner(), points=70)
        # within the bound: the report, the listing and the console page are the replica's,
        # as it was before the pause
        assert outstanding(live) == before
        assert newcomer not in partner_names(live)
        assert newcomer not in browser.get(f"{live.base_url}/console/partners", timeout=10).text
        assert replica_health(live)["reads"] == "replica"
        # past the bound: the primary's
        lagging = wait_reads_from(live, "primary")
        assert lagging["status"] == "lagging" and lagging["lag_s"] > LAG_S
        assert outstanding(live) == before + 70
        assert newcomer in partner_names(live)
        assert newcomer in browser.get(f"{live.base_url}/console/partners", timeout=10).text
        metrics = requests.get(live.base_url + "/metrics", timeout=10).text
        assert "coalition_db_replica_in_use 0.0" in metrics
        assert "coalition_db_replica_lag_seconds" in metrics
    back = wait_reads_from(live, "replica")
    assert back["status"] == "ok" and back["lag_s"] <= LAG_S
    assert outstanding(live) == before + 70
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "coalition.db"]
    assert [level for level, _ in said] == ["WARNING", "INFO"], said
    assert "past COALITION_REPLICA_MAX_LAG_S" in said[0][1]
    assert "reads go to the replica again" in said[1][1]


def get_partner_on(pair: Pair, partner_id: str) -> Partner:
    engine = make_engine(pair.url)
    try:
        with transaction(session_factory(engine)) as s:
            return get_partner(s, partner_id)
    finally:
        engine.dispose()


def get_partner_on_replica(pair: Pair, partner_id: str) -> Partner:
    engine = make_engine(pair.replica_url)
    try:
        with transaction(session_factory(engine)) as s:
            return get_partner(s, partner_id)
    finally:
        engine.dispose()


def test_a_partners_reads_see_its_own_writes_while_the_replica_lags(
    replicated: Live, pair: Pair
) -> None:
    live = replicated
    partner = live.partner()
    member = live.member(partner, points=10)
    pair.caught_up()
    wait_reads_from(live, "replica")
    with replay_paused(pair):
        earned = ok(
            partner.client.post(
                "/v1/earns",
                {"member_id": member, "reference": unique(), "amount": "25", "currency": "EUR"},
            ),
            201,
        )
        assert ok(partner.client.get(f"/v1/transactions/{earned['id']}"))["points"] == 25
        assert ok(partner.client.get(f"/v1/members/{member}/balance"))["available"] == 35
        listed = ok(partner.client.get("/v1/transactions", params={"member_id": member}))
        assert earned["id"] in {t["id"] for t in listed["data"]}
        # the replica was the one in use for the reads that may be a moment old meanwhile
        assert replica_health(live)["reads"] == "replica"


def test_a_console_form_shows_its_own_change_while_other_browsers_read_the_replica(
    replicated: Live, pair: Pair
) -> None:
    live = replicated
    partner = live.partner()
    acting, watching = console(live), console(live)
    page = f"{live.base_url}/console/partners/{partner.id}"
    csrf = CSRF.search(acting.get(page, timeout=10).text)
    assert csrf is not None
    pair.caught_up()
    wait_reads_from(live, "replica")
    with replay_paused(pair):
        after = acting.post(
            f"{live.base_url}/console/keys/{partner.key.key_id}/revoke",
            data={"csrf": csrf.group(1)},
            timeout=10,
        )
        # the page the form leads to, and this browser's next ones, read the primary
        assert after.status_code == 200 and after.url == page
        assert "coalition_fresh" in acting.cookies
        assert "revoked" in after.text
        assert "revoked" in acting.get(page, timeout=10).text
        # another browser reads the replica, still from before the change
        assert "revoked" not in watching.get(page, timeout=10).text
        assert replica_health(live)["reads"] == "replica"


def test_a_read_that_finds_nothing_on_the_replica_is_read_on_the_primary(pair: Pair) -> None:
    primary, replica_engine = make_engine(pair.url), make_engine(pair.replica_url)
    replica = Replica(replica_engine, max_lag_s=3600)
    reads = Reads(session_factory(primary), replica)
    try:
        with replay_paused(pair):
            with transaction(session_factory(primary)) as s:
                partner_id = create_partner(
                    s, name=unique("late"), currency="EUR", now=datetime.now(UTC)
                ).id
            assert replica.check().reachable and replica.usable
            # the replica does not have it yet; the primary answers for it
            assert reads.run(lambda s: get_partner(s, partner_id).id) == partner_id
            with pytest.raises(NotFound):
                reads.run(lambda s: get_partner(s, "prt_00000000000000000000000000"))
    finally:
        reads.close()
        primary.dispose()


def test_an_unreachable_replica_sends_reads_to_the_primary_and_says_so_once(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    nobody = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/coalition"
    primary = make_engine(pair.url)
    away = Replica(make_engine(nobody), max_lag_s=5)
    reads = Reads(session_factory(primary), away)
    caplog.set_level(logging.INFO, logger="coalition.db")
    try:
        for _ in range(3):
            assert not away.check().reachable
        assert not reads.on_replica
        assert reads.run(lambda s: s.connection().engine.url.port) == pair.primary.port
    finally:
        reads.close()
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "coalition.db"]
    assert len(said) == 1 and said[0][0] == "WARNING" and "unreachable" in said[0][1], said

    caplog.clear()
    standby = Replica(make_engine(pair.replica_url), max_lag_s=5)
    reads = Reads(session_factory(primary), standby)
    try:
        assert standby.check().lag_s <= 5 and reads.on_replica
        assert reads.run(lambda s: s.connection().engine.url.port) == pair.standby.port
        standby.lost(ConnectionError("the replica went away"))
        standby.lost(ConnectionError("the replica went away"))
        assert reads.run(lambda s: s.connection().engine.url.port) == pair.primary.port
        standby.check()
        assert reads.on_replica
    finally:
        reads.close()
        primary.dispose()
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "coalition.db"]
    assert [level for level, _ in said] == ["INFO", "WARNING", "INFO"], said
    assert "again" in said[2][1]
