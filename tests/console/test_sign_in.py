"""The console's sign-in and sessions through Litestar's test client: the cookie's flags,
single-use and expiring links, CSRF on every form, inactivity, sign-out, partner scoping, and
console actions in the audit log like the API's."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient
from sqlalchemy import select

from coalition.audit import AuditEvent
from coalition.db import transaction
from partners.signin import (
    ConsoleSession,
    LinkRefused,
    SignInLink,
    purge,
    redeem,
    token_hash,
)
from settlement.models import Statement, StatementEvent
from tests.console.conftest import CSRF, World


def _set_cookie(response_headers: list[str], name: str) -> str:
    return next(h for h in response_headers if h.startswith(f"{name}="))


def test_the_session_cookie_is_httponly_strict_and_secure_behind_https(world: World) -> None:
    token = world.link("finance")
    shown = world.client.get(f"/console/sign-in/{token}")
    csrf = CSRF.search(shown.text)
    assert csrf is not None
    done = world.client.post(
        "/console/sign-in",
        data={"csrf": csrf.group(1), "token": token},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"] == "/console/"
    cookie = _set_cookie(done.headers.get_list("set-cookie"), "coalition_console")
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "secure", "path=/console"} <= flags
    # only the token's hash is stored
    value = cookie.split(";")[0].split("=", 1)[1]
    with transaction(world.db.sessions) as s:
        stored = s.scalars(select(ConsoleSession)).one()
        assert stored.token_sha256 == token_hash(value) != value
        assert s.get(SignInLink, token_hash(token)) is not None


def test_the_session_cookie_is_not_secure_over_plain_http(plain_world: World) -> None:
    token = plain_world.link("operator")
    shown = plain_world.client.get(f"/console/sign-in/{token}")
    csrf = CSRF.search(shown.text)
    assert csrf is not None
    done = plain_world.client.post(
        "/console/sign-in", data={"csrf": csrf.group(1), "token": token}, follow_redirects=False
    )
    cookie = _set_cookie(done.headers.get_list("set-cookie"), "coalition_console")
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict"} <= flags and "secure" not in flags


def test_a_link_signs_in_once(world: World) -> None:
    token = world.link("finance")
    shown = world.client.get(f"/console/sign-in/{token}")
    csrf = CSRF.search(shown.text)
    assert csrf is not None
    # a second browser (another tab, a forwarded mail) opens the same link and signs in first
    with TestClient(app=world.client.app, base_url=str(world.client.base_url)) as other:
        other_page = other.get(f"/console/sign-in/{token}")
        other_csrf = CSRF.search(other_page.text)
        assert other_csrf is not None
        first = other.post("/console/sign-in", data={"csrf": other_csrf.group(1), "token": token})
        assert first.status_code == 200 and "Open period" in first.text
    late = world.client.post("/console/sign-in", data={"csrf": csrf.group(1), "token": token})
    assert late.status_code == 410 and "has been used already" in late.text
    status, text = world.sign_in(token)
    assert status == 410 and "has been used already" in text
    with transaction(world.db.sessions) as s:
        assert len(s.scalars(select(ConsoleSession)).all()) == 1


def test_a_link_is_spent_by_one_conditional_update(world: World) -> None:
    token = world.link("operator")
    with transaction(world.db.sessions) as s:
        redeem(s, token, world.db.clock())
    with transaction(world.db.sessions) as s, pytest.raises(LinkRefused) as refused:
        redeem(s, token, world.db.clock())
    assert refused.value.reason == "used"


def test_a_link_expires_after_ten_minutes(world: World) -> None:
    token = world.link("operator")
    world.db.clock.advance(minutes=9, seconds=59)
    page = world.client.get(f"/console/sign-in/{token}")
    assert page.status_code == 200
    world.db.clock.advance(seconds=1)
    status, text = world.sign_in(token)
    assert status == 410 and "has expired" in text
    csrf = CSRF.search(page.text)
    assert csrf is not None
    late = world.client.post("/console/sign-in", data={"csrf": csrf.group(1), "token": token})
    assert late.status_code == 410 and "has expired" in late.text


def test_an_unknown_link_is_refused(world: World) -> None:
    status, text = world.sign_in("x" * 43)
    assert status == 404 and "not a sign-in link" in text


def test_the_sign_in_form_needs_its_csrf_token(world: World) -> None:
    token = world.link("finance")
    world.client.get(f"/console/sign-in/{token}")
    refused = world.client.post("/console/sign-in", data={"token": token})
    assert refused.status_code == 403
    status, _ = world.sign_in(token)  # the link was not spent
    assert status == 200


def test_a_form_posted_without_its_csrf_token_is_refused(world: World) -> None:
    assert world.sign_in(world.link("finance"))[0] == 200
    form = {"payment_reference": "wire-1", "paid_at": world.db.clock().date().isoformat()}
    url = f"/console/statements/{world.alpha_statement}/settle"
    assert world.client.post(url, data=form).status_code == 403
    assert world.client.post(url, data={**form, "csrf": "0" * 64}).status_code == 403
    with transaction(world.db.sessions) as s:
        assert s.get(Statement, world.alpha_statement).status == "issued"  # type: ignore[union-attr]
    done = world.client.post(url, data={**form, "csrf": world.csrf()})
    assert done.status_code == 200 and "settled" in done.text


def test_another_sessions_csrf_token_is_refused(world: World) -> None:
    assert world.sign_in(world.link("operator"))[0] == 200
    operator_csrf = world.csrf()
    world.client.cookies.clear()
    assert world.sign_in(world.link("finance"))[0] == 200
    url = f"/console/statements/{world.alpha_statement}/settle"
    form = {"payment_reference": "wire-2", "paid_at": world.db.clock().date().isoformat()}
    assert world.client.post(url, data={**form, "csrf": operator_csrf}).status_code == 403


def test_a_session_ends_after_thirty_idle_minutes(world: World) -> None:
    assert world.sign_in(world.link("finance"))[0] == 200
    world.db.clock.advance(minutes=29)
    assert world.client.get("/console/").status_code == 200
    world.db.clock.advance(minutes=29)  # the last request kept it alive
    assert world.client.get("/console/").status_code == 200
    world.db.clock.advance(minutes=30)
    gone = world.client.get("/console/")
    assert gone.status_code == 401 and "not signed in" in gone.text


def test_signing_out_ends_the_session_on_the_server(world: World) -> None:
    assert world.sign_in(world.link("operator"))[0] == 200
    cookie = world.client.cookies["coalition_console"]
    out = world.client.post("/console/sign-out", data={"csrf": world.csrf()})
    assert out.status_code == 200 and "signed out" in out.text
    world.client.cookies.set("coalition_console", cookie, domain="console.coalition.test")
    assert world.client.get("/console/").status_code == 401


def test_a_partner_session_sees_only_its_own_partner(world: World) -> None:
    assert world.sign_in(world.link("partner", world.alpha))[0] == 200
    listed = world.client.get("/console/statements")
    assert world.alpha_statement in listed.text and world.beta_statement not in listed.text
    assert "Beta Air" not in listed.text
    for path in (
        f"/console/statements/{world.beta_statement}",
        f"/console/statements/{world.beta_statement}/export?format=csv",
    ):
        assert world.client.get(path).status_code == 404
    ack = world.client.post(
        f"/console/statements/{world.beta_statement}/acknowledge", data={"csrf": world.csrf()}
    )
    assert ack.status_code == 404
    for staff_page in ("/console/periods", "/console/partners", "/console/webhooks/health"):
        assert world.client.get(staff_page).status_code == 403
    own = world.client.get(f"/console/statements/{world.alpha_statement}")
    assert own.status_code == 200 and "Alpha Grocer" in own.text


def test_finance_may_not_resolve_disputes_or_manage_keys(world: World) -> None:
    assert world.sign_in(world.link("finance"))[0] == 200
    assert world.client.get(f"/console/partners/{world.alpha}").status_code == 403
    resolve = world.client.post(
        "/console/disputes/dsp_01ABCDEFGHJKMNPQRSTVWXYZ01/resolve",
        data={"csrf": world.csrf(), "outcome": "accepted"},
    )
    assert resolve.status_code == 403


def test_console_actions_are_in_the_audit_log_and_the_statement_history(world: World) -> None:
    assert world.sign_in(world.link("finance"))[0] == 200
    url = f"/console/statements/{world.alpha_statement}/settle"
    form = {"payment_reference": "wire-3", "paid_at": world.db.clock().date().isoformat()}
    assert world.client.post(url, data={**form, "csrf": world.csrf()}).status_code == 200
    with transaction(world.db.sessions) as s:
        session_id = s.scalars(select(ConsoleSession.id)).one()
        audited = s.scalars(select(AuditEvent).where(AuditEvent.key_id == session_id)).all()
        settled = [a for a in audited if a.action == f"POST {url}"]
        assert [(a.role, a.status, a.outcome) for a in settled] == [("finance", 303, "ok")]
        event = s.scalars(
            select(StatementEvent).where(StatementEvent.statement_id == world.alpha_statement)
        ).all()[-1]
        assert (event.to_status, event.key_id, event.role) == ("settled", session_id, "finance")


def test_the_member_page_names_other_partners_only(world: World) -> None:
    assert world.sign_in(world.link("member", None, world.member))[0] == 200
    page = world.client.get("/console/member")
    assert page.status_code == 200
    assert "Alpha Grocer" in page.text and "250" in page.text
    assert "seed-" not in page.text  # another partner's reference stays with it
    assert world.client.get("/console/statements").status_code == 403


def test_console_pages_are_never_stored_and_their_forms_post_only_here(world: World) -> None:
    assert world.sign_in(world.link("operator"))[0] == 200
    page = world.client.get("/console/periods")
    policy = page.headers["content-security-policy"]
    assert "form-action 'self'" in policy and "default-src 'none'" in policy
    assert "frame-ancestors 'none'" in policy and page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    sheet = world.client.get("/console/assets/console.css")
    assert sheet.status_code == 200 and sheet.headers["content-type"].startswith("text/css")
    docs = world.client.get("/problems/validation")
    assert "form-action 'none'" in docs.headers["content-security-policy"]


def test_links_and_sessions_are_purged_a_day_after_they_stopped_working(world: World) -> None:
    assert world.sign_in(world.link("finance"))[0] == 200
    world.db.clock.advance(hours=12)
    fresh = world.link("operator")
    world.db.clock.advance(days=1, minutes=1)  # the first link and session ended a day ago
    with transaction(world.db.sessions) as s:
        assert purge(s, world.db.clock()) == 2
    with transaction(world.db.sessions) as s:
        assert s.scalars(select(SignInLink.token_sha256)).all() == [token_hash(fresh)]
        assert s.scalars(select(ConsoleSession)).all() == []
