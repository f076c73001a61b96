"""Payments over HTTP, end to end: close -> acknowledge -> bank details (four eyes) -> payment
run (files valid against their XSD) -> the bank's camt.053 -> statements settled; the same file
again changes nothing; bad files get a problem document and change nothing; the queue and its
resolution; ``coalition bank import`` and its exit codes."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import replace
from importlib.resources import files as package_files
from pathlib import Path
from typing import Any

import pytest
import xmlschema

from cli.main import main
from coalition.db import make_engine, migrate
from settlement.bankfiles import MAX_BANK_FILE_BYTES, BankEntry, write_camt053
from tests.api.conftest import Client, Live, ok, problem, serve, unique

OPERATOR: dict[str, Any] = {
    "operator_name": "Coalition Operator GmbH",
    "operator_iban": "DE89370400440532013000",
    "operator_bic": "COBADEFFXXX",
    "sepa_creditor_id": "DE98ZZZ09999999999",
}
SCOPES = ("earn", "burn", "read", "statements")


@pytest.fixture(scope="module")
def paying(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A server of its own with the operator's account configured."""
    path: Path = tmp_path_factory.mktemp("payments") / "payments.sqlite3"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    yield from serve(f"sqlite:///{path}", "sqlite", **OPERATOR)


def _xml(client: Client, path: str, content: bytes, media: str = "application/xml") -> Any:
    return client.request("POST", path, content=content, headers={"Content-Type": media})


def _entry(statement: dict[str, Any], **changes: Any) -> BankEntry:
    net = statement["totals"]["net_amount"]
    exponent = len(net.partition(".")[2])
    minor = abs(int(net.replace(".", "").replace("-", "")))
    assert exponent in (0, 2)
    made = BankEntry(
        line=0,
        account_iban=OPERATOR["operator_iban"],
        amount_minor=minor,
        currency=statement["currency"],
        credit=net.startswith("-"),
        booking_date=dt.datetime.now(dt.UTC).date(),
        end_to_end_id=statement["id"],
        bank_reference=f"REF-{statement['id'][-6:]}",
        remittance="",
        reversal=False,
        return_reason=None,
    )
    return replace(made, **changes)


def _camt(entries: list[BankEntry], statement_id: str | None = None) -> bytes:
    return write_camt053(
        statement_id=statement_id or unique("camt"),
        account_iban=OPERATOR["operator_iban"],
        entries=entries,
        created_at=dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0),
    )


def _period(live: Live) -> tuple[dict[str, Any], dict[str, Any], Client, Client]:
    """Two partners: the operator pays ``paid``, ``payer`` pays by direct debit; finance's two
    keys have approved both partners' bank details; the period is closed and acknowledged."""
    paid = live.partner("EUR", scopes=SCOPES)
    payer = live.partner("EUR", scopes=SCOPES)
    member = live.member(payer, 4000)
    ok(
        paid.client.post("/v1/burns", {"member_id": member, "reference": unique(), "points": 900}),
        201,
    )
    first = live.client(live.role_key("finance"))
    second = live.client(live.role_key("finance"))
    for partner, body in (
        (paid, {"holder": "Paid GmbH", "iban": "FR14 2004 1010 0505 0001 3M02 606"}),
        (
            payer,
            {
                "holder": "Payer BV",
                "iban": "NL91ABNA0417164300",
                "bic": "ABNANL2A",
                "mandate_id": "MANDATE-42",
                "mandate_signed_on": "2025-06-01",
            },
        ),
    ):
        path = f"/v1/admin/partners/{partner.id}/bank-account"
        assert ok(first.request("PUT", path, json=body), 202)["status"] == "pending"
        ok(second.post(path + "/approve", {}), 200)
    closed = ok(
        live.operator.post(
            "/v1/admin/settlement/close",
            {"cut_off": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")},
        ),
        201,
    )
    statements = {s["partner_id"]: s for s in closed["statements"]}
    for partner in (paid, payer):
        ok(partner.client.post(f"/v1/statements/{statements[partner.id]['id']}/acknowledge", {}))
    return statements[paid.id], statements[payer.id], first, second


def test_close_acknowledge_pay_and_reconcile_settles_every_statement(paying: Live) -> None:
    paid, payer, finance, _ = _period(paying)
    run = ok(
        finance.post("/v1/admin/payment-runs", {"statement_ids": [paid["id"], payer["id"]]}), 201
    )
    assert [(p["statement_id"], p["direction"], p["end_to_end_id"]) for p in run["payments"]] == [
        (paid["id"], "credit_transfer", paid["id"]),
        (payer["id"], "direct_debit", payer["id"]),
    ]
    assert run["skipped"] == []
    assert {(f["format"], f["transactions"]) for f in run["files"]} == {
        ("pain.001.001.09", 1),
        ("pain.008.001.08", 1),
    }
    for file in run["files"]:
        got = finance.get(f"/v1/admin/payment-runs/{run['id']}/files/{file['name']}")
        assert got.status_code == 200 and got.headers["Content-Type"].startswith("application/xml")
        xsd = xmlschema.XMLSchema(
            str(package_files("sepaxml") / "schemas" / f"{file['format']}.xsd")
        )
        xsd.validate(got.content.decode())
    assert ok(finance.get(f"/v1/admin/payment-runs/{run['id']}"))["id"] == run["id"]
    bank_file = _camt([_entry(paid), _entry(payer)])
    imported = ok(_xml(finance, "/v1/admin/bank-statements", bank_file))
    assert imported["duplicate"] is False and imported["unmatched"] == []
    assert {m["statement_id"] for m in imported["matched"]} == {paid["id"], payer["id"]}
    for statement in (paid, payer):
        settled = ok(finance.get(f"/v1/admin/statements/{statement['id']}"))
        assert settled["status"] == "settled"
    again = ok(_xml(finance, "/v1/admin/bank-statements", bank_file))
    assert again["duplicate"] is True and again["id"] == imported["id"]
    # the run's money moved: it can no longer be cancelled
    problem(finance.post(f"/v1/admin/payment-runs/{run['id']}/cancel", {}), 409, "conflict")


def test_the_proposing_key_gets_four_eyes_and_operators_cannot_change_bank_details(
    paying: Live,
) -> None:
    partner = paying.partner("EUR", scopes=SCOPES)
    finance = paying.client(paying.role_key("finance"))
    path = f"/v1/admin/partners/{partner.id}/bank-account"
    body = {"holder": "Holder", "iban": "DE89370400440532013000"}
    problem(paying.operator.request("PUT", path, json=body), 403, "forbidden")
    ok(finance.request("PUT", path, json=body), 202)
    problem(finance.post(path + "/approve", {}), 403, "four-eyes")
    shown = ok(paying.operator.get(path))
    assert shown["status"] == "pending" and shown["active"] is None
    bad = problem(
        finance.request("PUT", path, json={**body, "iban": "DE89370400440532013001"}),
        422,
        "validation",
    )
    assert bad["errors"][0]["path"] == "$.iban"


def test_bad_bank_files_get_a_problem_document_and_change_nothing(paying: Live) -> None:
    finance = paying.client(paying.role_key("finance"))
    before = ok(finance.get("/v1/admin/reconciliation", params={"limit": 500}))
    for content in (
        b"<Document><BkToCstmrStmt>",
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa">]><Document>&a;</Document>',
        b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.09"/>',
    ):
        problem(_xml(finance, "/v1/admin/bank-statements", content), 422, "validation")
    too_big = problem(
        _xml(finance, "/v1/admin/bank-statements", b"<" + b" " * MAX_BANK_FILE_BYTES),
        413,
        "payload-too-large",
    )
    assert "16 MiB" in too_big["detail"]
    problem(
        _xml(finance, "/v1/admin/bank-statements", b"<x/>", media="application/json"),
        422,
        "validation",
    )
    assert ok(finance.get("/v1/admin/reconciliation", params={"limit": 500})) == before


def test_a_waiting_entry_is_listed_and_resolved_by_finance(paying: Live) -> None:
    paid, _, finance, _ = _period(paying)
    partial = _entry(paid, amount_minor=_entry(paid).amount_minor - 1)
    imported = ok(_xml(finance, "/v1/admin/bank-statements", _camt([partial])))
    (waiting,) = imported["unmatched"]
    assert waiting["reason"].startswith("amount differs")
    queue = ok(finance.get("/v1/admin/reconciliation"))["data"]
    assert waiting["entry"] in {e["id"] for e in queue}
    resolved = ok(
        finance.post(
            f"/v1/admin/reconciliation/{waiting['entry']}/resolve",
            {"statement_id": paid["id"], "note": "one cent of bank fees, agreed"},
        )
    )
    assert resolved["status"] == "resolved" and resolved["statement_id"] == paid["id"]
    assert ok(finance.get(f"/v1/admin/statements/{paid['id']}"))["status"] == "settled"


def test_coalition_bank_import_exits_0_when_all_matched_and_1_otherwise(
    paying: Live,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paid, payer, _, _ = _period(paying)
    monkeypatch.setenv("COALITION_DATABASE_URL", paying.engine.url.render_as_string(False))
    monkeypatch.setenv("COALITION_SECRET_KEY", "c3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3M")
    good = tmp_path / "good.xml"
    good.write_bytes(_camt([_entry(paid)]))
    assert main(["bank", "import", str(good), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["matched"][0]["statement_id"] == paid["id"]
    partial = tmp_path / "partial.xml"
    partial.write_bytes(_camt([_entry(payer, amount_minor=1)]))
    assert main(["bank", "import", str(partial)]) == 1
    assert "amount differs" in capsys.readouterr().out
    assert main(["bank", "import", str(good), "--json"]) == 0  # again: nothing changes
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["duplicate"] is True
    broken = tmp_path / "broken.xml"
    broken.write_bytes(b"<not-a-statement")
    assert main(["bank", "import", str(broken)]) == 2
