"""A signed read and its nonce (docs/security.md, "A replayed GET"): a GET signed with a nonce
is answered once and refused when replayed, as a POST is; a GET signed without one may be
replayed within the window; a signed balance read writes nothing but its nonce."""

from __future__ import annotations

import copy

import requests
from sqlalchemy import text

from tests.api.conftest import Live, ok, problem


def _captured(live: Live, path: str, auth: requests.auth.AuthBase) -> requests.PreparedRequest:
    """A signed ``GET`` as it went over the wire."""
    request = requests.Request("GET", live.base_url + path).prepare()
    signed = auth(request)
    assert isinstance(signed, requests.PreparedRequest)
    return signed


def _send(request: requests.PreparedRequest) -> requests.Response:
    with requests.Session() as session:
        return session.send(copy.deepcopy(request), timeout=30)


def test_a_replayed_get_with_a_nonce_is_refused(api: Live) -> None:
    partner = api.partner()
    member = api.member(partner, points=5)
    captured = _captured(api, f"/v1/members/{member}/balance", partner.key.auth(use_nonce=True))
    assert ok(_send(captured))["available"] == 5
    doc = problem(_send(captured), 401, "signature-invalid")
    assert doc["reason"] == "replayed-nonce"


def test_a_replayed_get_without_a_nonce_is_answered_within_the_window(api: Live) -> None:
    partner = api.partner()
    member = api.member(partner, points=5)
    captured = _captured(api, f"/v1/members/{member}/balance", partner.key.auth(use_nonce=False))
    assert ok(_send(captured)) == ok(_send(captured))


def _fingerprint(live: Live) -> dict[str, tuple[int, int]]:
    """Per table: its rows, and the newest row version's transaction id (an insert or an
    update makes a newer one, a delete fewer rows)."""
    with live.engine.connect() as conn:
        tables = conn.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        ).scalars()
        found = {}
        for table in tables:
            row = conn.execute(
                text(f'SELECT count(*), coalesce(max(xmin::text::bigint), 0) FROM "{table}"')
            ).one()
            found[table] = (int(row[0]), int(row[1]))
        return found


#: The one other write a signed request makes: its key's ``last_used_at``, at most once a
#: minute per key and process (partners/signatures/keycache.py).
_KEY_TOUCH = {"api_keys"}


def test_a_signed_balance_read_writes_its_nonce_and_nothing_else(live_pg: Live) -> None:
    partner = live_pg.partner()
    member = live_pg.member(partner, points=5)
    path = f"/v1/members/{member}/balance"
    before = _fingerprint(live_pg)
    ok(_send(_captured(live_pg, path, partner.key.auth(use_nonce=False))))
    between = _fingerprint(live_pg)
    assert {t for t in between if between[t] != before[t]} - _KEY_TOUCH == set()
    ok(_send(_captured(live_pg, path, partner.key.auth(use_nonce=True))))
    after = _fingerprint(live_pg)
    assert {t for t in after if after[t] != between[t]} - _KEY_TOUCH == {"request_nonces"}
    assert after["request_nonces"][0] == between["request_nonces"][0] + 1
