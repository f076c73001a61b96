"""The console end to end, in a real headless Chromium (Debian's ``chromium``, driven by
Playwright) against a real ``coalition serve``: finance, the partner and the operator take a
statement from issued to settled through the pages, and the member reads its page.

Every request any page makes is recorded, and all of them must go to the service's own origin.
Screenshots of the main pages are saved in ``artifacts/screenshots/`` (README, "The web
console").
"""

from __future__ import annotations

import os
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Request, sync_playwright

from coalition.db import make_engine, session_factory, transaction
from partners.signin import issue_link
from tests.api.conftest import Live, Partner, ok, unique
from tests.api.serving import COALITION, ROOT, Served, serve_process

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "artifacts" / "screenshots"


def require_chromium() -> None:
    """Skip (or, under CI, fail) when Debian's chromium is not installed (``./dev test``
    installs it)."""
    if CHROMIUM.exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"the browser tests must run in CI, but {CHROMIUM} is missing")
    pytest.skip(f"{CHROMIUM} is missing (./dev test installs it)")


@dataclass
class Coalition:
    """A served coalition with a closed period: two partners, one member, their statements."""

    served: Served
    live: Live
    alpha: Partner
    beta: Partner
    member: str
    statements: dict[str, str]  # partner id -> statement id
    requests: list[str] = field(default_factory=list)

    def cli_link(self, role: str) -> str:
        """``coalition console-link --role ROLE``: the link it prints."""
        done = subprocess.run(
            [*COALITION, "console-link", "--role", role],
            env=self.served.env,
            cwd=self.served.log_path.parent,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        url = done.stdout.decode().strip()
        assert url.startswith(self.served.base_url + "/console/sign-in/")
        return url


@pytest.fixture(scope="module")
def coalition(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coalition]:
    require_chromium()
    tmp = tmp_path_factory.mktemp("console")
    for served in serve_process(tmp, COALITION_WEBHOOK_ALLOW_PRIVATE="on"):
        engine = make_engine(served.env["COALITION_DATABASE_URL"])
        live = Live(served.base_url, "sqlite", engine, served.client(served.operator))
        scopes = ("earn", "burn", "read", "statements", "webhooks")
        alpha, beta = live.partner("EUR", scopes=scopes), live.partner("GBP", scopes=scopes)
        for partner, name in ((alpha, "Alpha Grocer"), (beta, "Beta Airways")):
            ok(live.operator.patch(f"/v1/admin/partners/{partner.id}", {"name": name}))
        member = live.member(alpha, 1200)
        live.member(beta, 80)
        for amount, at in (("300", beta), ("45", alpha)):
            body = {"member_id": member, "reference": unique(), "amount": amount}
            ok(at.client.post("/v1/earns", {**body, "currency": at.currency}), 201)
        burn = {"member_id": member, "reference": unique(), "points": 500}
        ok(beta.client.post("/v1/burns", burn), 201)
        hook = {"url": "http://127.0.0.1:9/coalition/hooks", "description": "test receiver"}
        ok(alpha.client.post("/v1/webhook-endpoints", hook), 201)
        cut_off = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        closed = ok(live.operator.post("/v1/admin/settlement/close", {"cut_off": cut_off}), 201)
        statements = {s["partner_id"]: s["id"] for s in closed["statements"]}
        try:
            yield Coalition(served, live, alpha, beta, member, statements)
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


def _context(browser: Browser, coalition: Coalition) -> BrowserContext:
    context = browser.new_context(
        accept_downloads=True, viewport={"width": 1360, "height": 900}, locale="en-GB"
    )
    context.set_default_timeout(20_000)

    def record(request: Request) -> None:
        coalition.requests.append(request.url)

    context.on("request", record)
    return context


def _sign_in(page: Page, link: str) -> None:
    page.goto(link)
    page.locator("form[action$='/console/sign-in'] button").click()
    page.wait_for_load_state()


def _shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _status(page: Page) -> str:
    return page.locator("#status").inner_text()


def test_a_statement_goes_from_issued_to_settled_through_the_console(
    browser: Browser, coalition: Coalition
) -> None:
    alpha_statement = coalition.statements[coalition.alpha.id]
    beta_statement = coalition.statements[coalition.beta.id]
    base = coalition.served.base_url

    # finance signs in by link, reads the overview and the period, opens alpha's statement
    finance = _context(browser, coalition).new_page()
    finance_link = coalition.cli_link("finance")
    _sign_in(finance, finance_link)
    assert finance.locator("h1").first.inner_text() == "Open period"
    assert finance.locator("svg.chart rect.bar").count() >= 3
    _shot(finance, "overview")
    finance.get_by_role("link", name="Periods").click()
    _shot(finance, "periods")
    finance.locator("table.data tbody a").first.click()
    assert finance.locator("svg.heat").count() == 1
    _shot(finance, "period")
    finance.get_by_role("link", name="Alpha Grocer").click()
    assert finance.url == f"{base}/console/statements/{alpha_statement}"
    assert _status(finance) == "issued"
    _shot(finance, "statement-finance")

    # its CSV download is byte for byte the API's export
    with finance.expect_download() as download:
        finance.locator("#download-csv").click()
    downloaded = Path(download.value.path()).read_bytes()
    exported = coalition.live.operator.get(
        f"/v1/admin/statements/{alpha_statement}/export", params={"format": "csv"}
    )
    assert exported.status_code == 200 and downloaded == exported.content

    # the partner disputes a line, and sees its own partner only
    partner = _context(browser, coalition).new_page()
    link = ok(coalition.alpha.client.post("/v1/console-links", {}), 201)["url"]
    _sign_in(partner, link)
    assert partner.url == f"{base}/console/statements"
    listed = partner.locator("#statements tbody tr")
    assert [listed.nth(i).get_attribute("data-statement") for i in range(listed.count())] == [
        alpha_statement
    ]
    assert "Beta Airways" not in partner.content() and beta_statement not in partner.content()
    _shot(partner, "statements-partner")
    other = partner.goto(f"{base}/console/statements/{beta_statement}")
    assert other is not None and other.status == 404
    partner.goto(f"{base}/console/statements/{alpha_statement}")
    line = partner.locator("#lines tbody tr").first
    disputed_txn = line.get_attribute("data-line")
    assert disputed_txn is not None
    line.locator("input[type=checkbox]").check()
    partner.locator("input[name=reason]").fill("This earn was refunded at the till.")
    partner.locator("#dispute").click()
    assert _status(partner) == "disputed"
    assert disputed_txn in partner.locator("#disputes").inner_text()
    _shot(partner, "statement-partner-disputed")
    partner.get_by_role("link", name="Transactions").click()
    assert partner.locator("#transactions tbody tr").count() >= 2
    _shot(partner, "transactions-partner")
    partner.get_by_role("link", name="Webhooks").click()
    partner.locator("table.data tbody a").first.click()
    partner.locator("#ping").click()
    assert "ping event is queued" in partner.locator(".flash").inner_text()
    _shot(partner, "webhook-endpoint-partner")

    # the operator resolves the dispute
    operator = _context(browser, coalition).new_page()
    _sign_in(operator, coalition.cli_link("operator"))
    operator.goto(f"{base}/console/statements/{alpha_statement}")
    resolve = operator.locator(".resolve-form").first
    resolve.locator("select[name=outcome]").select_option("rejected")
    resolve.locator("input[name=note]").fill("The refund is on the next statement.")
    resolve.get_by_role("button", name="Resolve").click()
    assert _status(operator) == "acknowledged"
    operator.get_by_role("link", name="Partners").click()
    _shot(operator, "partners")
    operator.get_by_role("link", name="Alpha Grocer").click()
    _shot(operator, "partner")
    operator.get_by_role("link", name="Webhooks").click()
    _shot(operator, "webhook-health")

    # finance marks it settled
    finance.goto(f"{base}/console/statements/{alpha_statement}")
    finance.locator("input[name=payment_reference]").fill("SEPA-2026-0042")
    finance.locator("#settle").click()
    assert _status(finance) == "settled"
    _shot(finance, "statement-settled")
    settled = ok(coalition.live.operator.get(f"/v1/admin/statements/{alpha_statement}"))
    assert settled["status"] == "settled"

    # a used link is refused with a clear page
    again = finance.goto(finance_link)
    assert again is not None and again.status == 410
    assert "has been used already" in finance.locator(".detail").inner_text()
    _assert_same_origin(coalition)


def test_an_expired_link_is_refused(browser: Browser, coalition: Coalition) -> None:
    sessions = session_factory(coalition.live.engine)
    with transaction(sessions) as s:
        token = issue_link(
            s, role="finance", now=datetime.now(UTC) - timedelta(minutes=10, seconds=1)
        ).token
    page = _context(browser, coalition).new_page()
    shown = page.goto(f"{coalition.served.base_url}/console/sign-in/{token}")
    assert shown is not None and shown.status == 410
    assert "has expired" in page.locator(".detail").inner_text()
    _shot(page, "link-expired")
    _assert_same_origin(coalition)


def test_a_form_posted_without_its_csrf_token_is_refused(
    browser: Browser, coalition: Coalition
) -> None:
    beta_statement = coalition.statements[coalition.beta.id]
    page = _context(browser, coalition).new_page()
    _sign_in(page, coalition.cli_link("finance"))
    page.goto(f"{coalition.served.base_url}/console/statements/{beta_statement}")
    page.locator("input[name=payment_reference]").fill("SEPA-FORGED")
    page.evaluate("document.querySelector('#settle-form input[name=csrf]').remove()")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.locator("#settle").click()
    assert posted.value.status == 403
    assert "security token" in page.locator(".detail").inner_text()
    after = ok(coalition.live.operator.get(f"/v1/admin/statements/{beta_statement}"))
    assert after["status"] == "issued" and after.get("payment_reference") is None
    _assert_same_origin(coalition)


def test_the_member_page_shows_exactly_the_expiring_points_of_the_ledger(
    browser: Browser, coalition: Coalition
) -> None:
    beta = coalition.beta
    operator = coalition.live.operator
    link = ok(operator.post(f"/v1/admin/members/{coalition.member}/portal-links", {}), 201)["url"]
    page = _context(browser, coalition).new_page()
    _sign_in(page, link)
    assert page.url == f"{coalition.served.base_url}/console/member"
    balance = ok(beta.client.get(f"/v1/members/{coalition.member}/balance"))
    rows = page.locator("#expiring tbody tr")
    shown = [
        (
            int(rows.nth(i).locator("td").first.get_attribute("data-points") or ""),
            _moment(rows.nth(i).locator("time").get_attribute("datetime") or ""),
            rows.nth(i).locator("td").first.inner_text(),
        )
        for i in range(rows.count())
    ]
    ledger = [(e["points"], _moment(e["expires_at"])) for e in balance["expiring"]]
    assert [(p, at) for p, at, _ in shown] == ledger and len(ledger) >= 2
    assert [text for _, _, text in shown] == [f"{p:,}" for p, _ in ledger]
    assert [at for _, at in ledger] == sorted(at for _, at in ledger)  # soonest first
    assert f"{balance['available']:,}" in page.locator("#balance").inner_text()
    history = page.locator("#history").inner_text()
    assert "Alpha Grocer" in history and "Beta Airways" in history
    _shot(page, "member")
    _assert_same_origin(coalition)


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _assert_same_origin(coalition: Coalition) -> None:
    origin = urllib.parse.urlsplit(coalition.served.base_url)
    assert coalition.requests, "no request was recorded"
    elsewhere: list[Any] = [
        url
        for url in coalition.requests
        if urllib.parse.urlsplit(url)[:2] != (origin.scheme, origin.netloc)
    ]
    assert elsewhere == []
