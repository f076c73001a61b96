"""``POST /v1/console-links`` and ``POST /v1/members/{member_id}/portal-links``: single-use
links at the public URL, valid 10 and 15 minutes, stored only as the SHA-256 of their token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import requests
from sqlalchemy.orm import Session

from partners.signin import SignInLink, token_hash
from tests.api.conftest import Live, ok, problem

PUBLIC = "http://api.coalition.test/console/sign-in/"


def _stored(api: Live, url: str) -> SignInLink:
    assert url.startswith(PUBLIC)
    token = url.removeprefix(PUBLIC)
    with Session(api.engine) as s:
        link = s.get(SignInLink, token_hash(token))
        assert link is not None
        s.expunge(link)
        return link


def _expires_in(body: dict[str, str]) -> timedelta:
    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    return expires - datetime.now(UTC)


def test_a_partner_key_of_any_scope_gets_a_link_to_its_view_of_the_console(api: Live) -> None:
    partner = api.partner("EUR", scopes=("webhooks",))
    made = ok(partner.client.post("/v1/console-links", {}), 201)
    assert set(made) == {"url", "expires_at"}
    assert timedelta(minutes=9) < _expires_in(made) <= timedelta(minutes=10)
    link = _stored(api, made["url"])
    assert (link.role, link.partner_id, link.member_id, link.used_at) == (
        "partner",
        partner.id,
        None,
        None,
    )
    page = requests.get(
        api.base_url + made["url"].removeprefix("http://api.coalition.test"), timeout=10
    )
    assert page.status_code == 200 and "Sign in as partner" in page.text


def test_a_member_link_opens_the_members_page_for_fifteen_minutes(api: Live) -> None:
    partner = api.partner("EUR")
    member = api.member(partner, 10)
    made = ok(partner.client.post(f"/v1/members/{member}/portal-links", {}), 201)
    assert timedelta(minutes=14) < _expires_in(made) <= timedelta(minutes=15)
    link = _stored(api, made["url"])
    assert (link.role, link.partner_id, link.member_id) == ("member", partner.id, member)


def test_a_member_link_for_an_unknown_member_is_404(api: Live) -> None:
    partner = api.partner("EUR")
    problem(partner.client.post("/v1/members/mem_nobody/portal-links", {}), 404, "unknown-member")
    problem(
        api.operator.post("/v1/admin/members/mem_nobody/portal-links", {}), 404, "unknown-member"
    )


def test_a_partners_member_link_names_it_and_the_operators_names_no_partner(api: Live) -> None:
    partner = api.partner("EUR")
    member = api.member(partner, 10)
    by_partner = _stored(
        api, ok(partner.client.post(f"/v1/members/{member}/portal-links", {}), 201)["url"]
    )
    made = ok(api.operator.post(f"/v1/admin/members/{member}/portal-links", {}), 201)
    assert timedelta(minutes=14) < _expires_in(made) <= timedelta(minutes=15)
    whole = _stored(api, made["url"])
    assert (by_partner.role, by_partner.partner_id) == ("member", partner.id)
    assert (whole.role, whole.partner_id, whole.member_id) == ("member", None, member)
