"""The console's pages and actions beyond the statement workflow, through Litestar's test
client: keys issued (the secret shown once) and revoked, transactions filtered and paged, a
partner's webhook test ping, the staff's overview and period numbers."""

from __future__ import annotations

import base64
import re

import pytest
from sqlalchemy import select

from coalition.db import transaction
from partners.keys import unseal
from partners.models import ApiKey
from partners.webhooks.endpoints import Webhooks
from settlement import reports
from tests.console.conftest import World

SECRET = re.compile(r'<code class="secret-value">([A-Za-z0-9_-]{43})</code>')


def test_the_operator_issues_a_key_whose_secret_is_shown_once_and_revokes_it(
    world: World,
) -> None:
    assert world.sign_in(world.link("operator"))[0] == 200
    issued = world.client.post(
        f"/console/partners/{world.alpha}/keys",
        data={"csrf": world.csrf(), "scopes": ["read", "statements"]},
    )
    assert issued.status_code == 200
    shown = SECRET.search(issued.text)
    assert shown is not None
    with transaction(world.db.sessions) as s:
        key = s.scalars(
            select(ApiKey).where(
                ApiKey.partner_id == world.alpha, ApiKey.scopes == "read statements"
            )
        ).one()
        raw = base64.urlsafe_b64decode(shown.group(1) + "=")
        assert key.secret_sealed is not None
        assert unseal(world.db.settings.secret_key, key.id, key.secret_sealed) == raw
        key_id = key.id
    again = world.client.get(f"/console/partners/{world.alpha}")
    assert key_id in again.text and shown.group(1) not in again.text
    revoked = world.client.post(f"/console/keys/{key_id}/revoke", data={"csrf": world.csrf()})
    assert revoked.status_code == 200 and "revoked" in revoked.text
    with transaction(world.db.sessions) as s:
        assert s.get(ApiKey, key_id).revoked_at == world.db.clock()  # type: ignore[union-attr]


def test_a_key_without_scopes_is_refused_with_the_apis_rule(world: World) -> None:
    assert world.sign_in(world.link("operator"))[0] == 200
    refused = world.client.post(
        f"/console/partners/{world.alpha}/keys", data={"csrf": world.csrf()}
    )
    assert refused.status_code == 422 and "a non-empty list of distinct scopes" in refused.text


def test_a_partner_pages_through_its_transactions_with_filters(world: World) -> None:
    partner = world.db.ops
    for i in range(55):
        partner.earn(
            world.alpha, member_id=world.member, reference=f"page-{i}", amount="2", currency="EUR"
        )
    assert world.sign_in(world.link("partner", world.alpha))[0] == 200
    first = world.client.get("/console/transactions")
    rows = re.findall(r'data-txn="(txn_[0-9A-Z]+)"', first.text)
    assert len(rows) == 50 and "page-54" in first.text and "page-4<" not in first.text
    cursor = re.search(r"cursor=([A-Za-z0-9._-]+)", first.text)
    assert cursor is not None
    second = world.client.get("/console/transactions", params={"cursor": cursor.group(1)})
    more = re.findall(r'data-txn="(txn_[0-9A-Z]+)"', second.text)
    assert len(more) == 6 and not set(rows) & set(more)  # 55 earns and the seed earn
    burns = world.client.get("/console/transactions", params={"kind": "burn"})
    assert "No transactions match" in burns.text
    bad = world.client.get("/console/transactions", params={"since": "yesterday"})
    assert bad.status_code == 422 and "a date such as" in bad.text


def test_a_partner_sends_a_test_ping_to_its_own_endpoint_only(world: World) -> None:
    hooks = Webhooks(world.db.settings.secret_key, allow_private=True)
    with transaction(world.db.sessions) as s:
        own = hooks.create(
            s, world.alpha, url="http://127.0.0.1:9/h", events=None, description=None,
            now=world.db.clock(),
        ).endpoint.id  # fmt: skip
        other = hooks.create(
            s, world.beta, url="http://127.0.0.1:9/b", events=None, description=None,
            now=world.db.clock(),
        ).endpoint.id  # fmt: skip
    assert world.sign_in(world.link("partner", world.alpha))[0] == 200
    sent = world.client.post(f"/console/webhooks/{own}/test", data={"csrf": world.csrf()})
    assert sent.status_code == 200 and "ping event is queued" in sent.text
    assert "ping" in sent.text and "pending" in sent.text
    listed = world.client.get("/console/webhooks")
    assert own in listed.text and other not in listed.text
    assert world.client.get(f"/console/webhooks/{other}").status_code == 404
    refused = world.client.post(f"/console/webhooks/{other}/test", data={"csrf": world.csrf()})
    assert refused.status_code == 404


def test_the_staff_see_the_open_period_and_the_closed_one(world: World) -> None:
    partner = world.db.ops
    world.db.clock.advance(minutes=5)
    partner.earn(
        world.alpha, member_id=world.member, reference="open-1", amount="7", currency="EUR"
    )
    world.db.clock.advance(minutes=5)
    assert world.sign_in(world.link("finance"))[0] == 200
    overview = world.client.get("/console/")
    issued = re.search(r'id="open-issued">([^<]+)<', overview.text)
    liability = re.search(r'id="liability">([^<]+)<', overview.text)
    assert issued is not None and issued.group(1) == "7"
    assert liability is not None and liability.group(1) == "297"  # 250 + 40 + 7
    assert "<svg" in overview.text and "<script" not in overview.text
    period = world.client.get("/console/periods")
    link = re.search(r'href="/console/periods/(per_[0-9A-Z]+)"', period.text)
    assert link is not None
    shown = world.client.get(f"/console/periods/{link.group(1)}").text
    assert "Alpha Grocer" in shown and "Beta Air" in shown and "−2.50 EUR" in shown


def test_dates_at_the_calendars_edge_are_a_page_naming_the_bound(world: World) -> None:
    """The console's dates pass the API's one time rule: a 422 page, never a 500 in JSON."""
    assert world.sign_in(world.link("partner", world.alpha))[0] == 200
    for params in ({"until": "9999-12-31"}, {"since": "9999-12-31"}, {"since": "0001-01-01"}):
        page = world.client.get("/console/transactions", params=params)
        assert page.status_code == 422, (params, page.text)
        assert page.headers["content-type"].startswith("text/html")
        assert "1970-01-01" in page.text and "9000-01-01" in page.text


def test_an_unexpected_failure_is_a_page_with_its_error_id_not_json(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a defect")

    assert world.sign_in(world.link("operator"))[0] == 200
    monkeypatch.setattr(reports, "liability", broken)
    answer = world.client.get("/console/")
    assert answer.status_code == 500
    assert answer.headers["content-type"].startswith("text/html")
    shown = re.search(r"logged with error id (\S+?)<", answer.text)
    assert shown is not None and "a defect" not in answer.text
    assert any(shown.group(1) in r.getMessage() for r in caplog.records)
