"""Paying and reconciling in a real headless Chromium against a real ``coalition serve``:
after the close and the partners' acknowledgements, one finance person proposes the partners'
bank details (shown loudly as pending, and not approvable by that person), a second approves
them, makes a payment run and downloads its file (byte for byte the API's), then uploads the
bank's camt.053: every statement ends settled. Screenshots go to ``artifacts/screenshots/``."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from coalition.db import make_engine
from settlement.bankfiles import BankEntry, write_camt053
from tests.api.conftest import Client, Key, Live, Partner, ok, unique
from tests.api.serving import COALITION, Served, serve_process
from tests.console.test_browser import (
    CHROMIUM,
    _assert_same_origin,
    _context,
    _shot,
    _sign_in,
    require_chromium,
)
from tests.console.test_browser import Coalition as Recorded

OPERATOR_IBAN = "DE89370400440532013000"
SCOPES = ("earn", "burn", "read", "statements")


@dataclass
class Paying:
    served: Served
    live: Live
    paid: Partner
    payer: Partner
    statements: dict[str, dict[str, object]]
    finance: tuple[Key, Key]
    recorded: Recorded

    def link(self, key: Key) -> str:
        """``coalition console-link --role finance --key KEY``: the link it prints."""
        done = subprocess.run(
            [*COALITION, "console-link", "--role", "finance", "--key", key.key_id],
            env=self.served.env,
            cwd=self.served.log_path.parent,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode().strip()


@pytest.fixture(scope="module")
def paying(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Paying]:
    require_chromium()
    tmp = tmp_path_factory.mktemp("paying")
    for served in serve_process(
        tmp,
        COALITION_OPERATOR_NAME="Coalition Operator GmbH",
        COALITION_OPERATOR_IBAN=OPERATOR_IBAN,
        COALITION_OPERATOR_BIC="COBADEFFXXX",
        COALITION_SEPA_CREDITOR_ID="DE98ZZZ09999999999",
    ):
        engine = make_engine(served.env["COALITION_DATABASE_URL"])
        live = Live(served.base_url, "sqlite", engine, served.client(served.operator))
        paid, payer = live.partner("EUR", scopes=SCOPES), live.partner("EUR", scopes=SCOPES)
        for partner, name in ((paid, "Paid Grocer"), (payer, "Payer Airways")):
            ok(live.operator.patch(f"/v1/admin/partners/{partner.id}", {"name": name}))
        member = live.member(payer, 3000)
        burn = {"member_id": member, "reference": unique(), "points": 1500}
        ok(paid.client.post("/v1/burns", burn), 201)
        cut_off = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        closed = ok(live.operator.post("/v1/admin/settlement/close", {"cut_off": cut_off}), 201)
        statements = {s["partner_id"]: s for s in closed["statements"]}
        for partner in (paid, payer):
            statement_id = statements[partner.id]["id"]
            ok(partner.client.post(f"/v1/statements/{statement_id}/acknowledge", {}))
        finance = (live.role_key("finance"), live.role_key("finance"))
        recorded = Recorded(served, live, paid, payer, member, {})
        try:
            yield Paying(served, live, paid, payer, statements, finance, recorded)
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


def _propose(page: Page, base: str, partner_id: str, **fields: str) -> None:
    page.goto(f"{base}/console/bank-accounts/{partner_id}")
    for name, value in fields.items():
        page.locator(f"#propose-form input[name={name}]").fill(value)
    page.locator("#propose").click()
    page.wait_for_load_state()


def _bank_entry(statement: dict[str, object]) -> BankEntry:
    totals = statement["totals"]
    assert isinstance(totals, dict)
    net = str(totals["net_amount"])
    return BankEntry(
        line=0,
        account_iban=OPERATOR_IBAN,
        amount_minor=abs(int(net.replace(".", ""))),
        currency=str(statement["currency"]),
        credit=net.startswith("-"),
        booking_date=datetime.now(UTC).date(),
        end_to_end_id=str(statement["id"]),
        bank_reference=f"BANK-{str(statement['id'])[-6:]}",
        remittance="",
        reversal=False,
        return_reason=None,
    )


def test_finance_pays_and_reconciles_a_period_through_the_console(
    browser: Browser,
    paying: Paying,
    tmp_path: Path,
) -> None:
    base = paying.served.base_url
    first = _context(browser, paying.recorded).new_page()
    _sign_in(first, paying.link(paying.finance[0]))
    _propose(first, base, paying.paid.id, holder="Paid Grocer SA", iban="BE68539007547034")
    assert first.locator("#pending-change").is_visible()
    assert first.locator("#own-change").is_visible() and first.locator("#approve").count() == 0
    _propose(
        first,
        base,
        paying.payer.id,
        holder="Payer Airways BV",
        iban="NL91ABNA0417164300",
        mandate_id="PAYER-MANDATE-1",
        mandate_signed_on="2025-05-01",
    )
    first.goto(f"{base}/console/")
    assert "2 changes of bank details wait" in first.locator("#pending-bank-details").inner_text()
    _shot(first, "bank-details-pending")

    second = _context(browser, paying.recorded).new_page()
    _sign_in(second, paying.link(paying.finance[1]))
    for partner in (paying.paid, paying.payer):
        second.goto(f"{base}/console/bank-accounts/{partner.id}")
        second.locator("#approve").click()
        second.wait_for_load_state()
        assert second.locator("#active").is_visible()
    _shot(second, "bank-details-approved")

    second.get_by_role("link", name="Payments").click()
    second.locator("#create-run").click()
    second.wait_for_load_state()
    assert second.locator("#payments tbody tr").count() == 2
    _shot(second, "payment-run")
    finance_api = Client(base, paying.finance[1])
    run_id = second.locator(".sub").inner_text().split(" ")[0]
    for index in range(second.locator("a.file").count()):
        link = second.locator("a.file").nth(index)
        name = link.inner_text()
        with second.expect_download() as download:
            link.click()
        api_file = finance_api.get(f"/v1/admin/payment-runs/{run_id}/files/{name}")
        assert Path(download.value.path()).read_bytes() == api_file.content

    bank = tmp_path / "bank-statement.camt053.xml"
    bank.write_bytes(
        write_camt053(
            statement_id=unique("BANK"),
            account_iban=OPERATOR_IBAN,
            entries=[_bank_entry(paying.statements[p.id]) for p in (paying.paid, paying.payer)],
            created_at=datetime.now(UTC).replace(tzinfo=None, microsecond=0),
        )
    )
    second.get_by_role("link", name="Reconciliation").click()
    second.locator("#import-form input[type=file]").set_input_files(str(bank))
    second.locator("#import").click()
    second.wait_for_load_state()
    assert "2 settled a statement" in second.locator("#import-result").inner_text()
    assert second.locator("#queue-empty").is_visible()
    _shot(second, "reconciliation")
    for partner in (paying.paid, paying.payer):
        statement_id = paying.statements[partner.id]["id"]
        shown = ok(paying.live.operator.get(f"/v1/admin/statements/{statement_id}"))
        assert shown["status"] == "settled"
    _assert_same_origin(paying.recorded)
