"""The console's payment pages (Litestar's test client): four eyes in the console (the
proposer's session cannot approve, another finance key's can, a session tied to no key can do
neither), the pending change shown loudly, a payment run made, downloaded byte for byte as
the API's and cancelled, and the bank's statement uploaded, settling what it paid, with the
rest resolved from the queue."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date

import pytest

from coalition.db import transaction
from partners.keys import create_key
from partners.signin import issue_link
from settlement import workflow
from settlement.payments import runs
from tests.conftest import Db
from tests.console.conftest import CSRF, World, _world
from tests.settlement.payments_helpers import OPERATOR, camt, entry, statement_of


@pytest.fixture
def paying(lite: Db) -> Iterator[World]:
    lite.configure(**OPERATOR)
    yield from _world(lite, "https://console.coalition.test")


def _finance_key(world: World) -> str:
    with transaction(world.db.sessions) as s:
        made = create_key(
            s,
            secret_key=world.db.settings.secret_key,
            role="finance",
            partner_id=None,
            alg="hmac-sha256",
            scopes=[],
            public_key=None,
            expires_at=None,
            now=world.db.clock(),
        )
        return made.key.id


def _sign_in_finance(world: World, key_id: str | None) -> str:
    with transaction(world.db.sessions) as s:
        token = issue_link(s, role="finance", now=world.db.clock(), key_id=key_id).token
    status, _ = world.sign_in(token)
    assert status == 200
    found = CSRF.search(world.client.get("/console/payments").text)
    assert found is not None
    return found.group(1)


def _acknowledge(world: World) -> None:
    with transaction(world.db.sessions) as s:
        for statement_id in (world.alpha_statement, world.beta_statement):
            workflow.acknowledge(
                s,
                statement_id,
                workflow.Actor("key_partner", "partner"),
                secret_key=world.db.settings.secret_key,
                now=world.db.clock(),
            )


def test_four_eyes_hold_in_the_console_and_a_pending_change_is_shown_loudly(
    paying: World,
) -> None:
    first, second = _finance_key(paying), _finance_key(paying)
    csrf = _sign_in_finance(paying, first)
    page = f"/console/bank-accounts/{paying.alpha}"
    done = paying.client.post(
        page,
        data={"csrf": csrf, "holder": "Alpha Grocer SA", "iban": "BE68539007547034", "bic": ""},
    )
    assert done.status_code == 200 and 'id="pending-change"' in done.text
    assert 'id="own-change"' in done.text and 'id="approve"' not in done.text
    refused = paying.client.post(page + "/approve", data={"csrf": csrf})
    assert refused.status_code == 403 and "another finance key must approve" in refused.text
    assert 'id="pending-bank-details"' in paying.client.get("/console/").text
    assert 'id="pending-bank-details"' in paying.client.get("/console/bank-accounts").text
    bad = paying.client.post(page, data={"csrf": csrf, "holder": "X", "iban": "BE68539007547035"})
    assert bad.status_code == 422 and "not a valid IBAN" in bad.text
    csrf = _sign_in_finance(paying, None)
    assert 'id="no-key"' in paying.client.get(page).text
    assert paying.client.post(page + "/approve", data={"csrf": csrf}).status_code == 403
    csrf = _sign_in_finance(paying, second)
    approved = paying.client.post(page + "/approve", data={"csrf": csrf})
    assert approved.status_code == 200 and 'id="active"' in approved.text
    assert 'id="pending-change"' not in approved.text


def test_finance_runs_payments_and_reconciles_the_banks_statement_in_the_console(
    paying: World,
) -> None:
    first, second = _finance_key(paying), _finance_key(paying)
    csrf = _sign_in_finance(paying, first)
    paying.client.post(
        f"/console/bank-accounts/{paying.alpha}",
        data={
            "csrf": csrf,
            "holder": "Alpha Grocer SA",
            "iban": "BE68539007547034",
            "mandate_id": "ALPHA-1",
            "mandate_signed_on": "2025-03-01",
        },
    )
    csrf = _sign_in_finance(paying, second)
    paying.client.post(f"/console/bank-accounts/{paying.alpha}/approve", data={"csrf": csrf})
    _acknowledge(paying)
    made = paying.client.post("/console/payments", data={"csrf": csrf, "execution_date": ""})
    assert made.status_code == 200
    run_id = re.search(r"(pay_[0-9A-Z]{26})", made.text)
    assert run_id is not None
    assert "no SEPA direct debit mandate" in made.text  # beta pays by its own transfer
    (file_name,) = re.findall(r'class="file" href="[^"]+/files/([^"]+)"', made.text)
    download = paying.client.get(f"/console/payments/{run_id.group(1)}/files/{file_name}")
    with transaction(paying.db.sessions) as s:
        assert download.content == runs.get_file(s, run_id.group(1), file_name).content
    alpha = statement_of(paying.db, paying.alpha_statement)
    beta = statement_of(paying.db, paying.beta_statement)
    bank = camt(
        [
            entry(alpha, booking=date(2026, 1, 5)),
            entry(beta, amount_minor=abs(beta.net_minor) - 1, end_to_end_id=None,
                  remittance=f"statement {beta.id}"),
        ]
    )  # fmt: skip
    imported = paying.client.post(
        "/console/reconciliation/import",
        data={"csrf": csrf},
        files={"file": ("2026-01-05.camt.xml", bank, "application/xml")},
    )
    assert imported.status_code == 200 and 'id="import-result"' in imported.text
    assert "amount differs" in imported.text
    assert statement_of(paying.db, alpha.id).status == "settled"
    (entry_id,) = re.findall(r'id="entry-(bke_[0-9A-Z]{26})"', imported.text)
    resolved = paying.client.post(
        f"/console/reconciliation/{entry_id}/resolve",
        data={"csrf": csrf, "statement_id": beta.id, "note": "short by a cent", "action": "match"},
    )
    assert resolved.status_code == 200 and 'id="queue-empty"' in resolved.text
    assert statement_of(paying.db, beta.id).status == "settled"
    paying.db.assert_ledger_ok()
    refused = paying.client.post(f"/console/payments/{run_id.group(1)}/cancel", data={"csrf": csrf})
    assert refused.status_code == 409  # its money moved
