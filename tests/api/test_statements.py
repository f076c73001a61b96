"""Statements over HTTP: the close, a partner's own statements only (404 otherwise), finance
sees all, the signed exports verify offline (and fail when tampered with, and still verify after
a key rotation), and the finance workflow's recorded, enforced transitions."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cli.main import main
from coalition.db import session_factory, transaction
from settlement.document import StatementDocument
from settlement.signing import rotate
from tests.api.conftest import SECRET_KEY, Live, Partner, ok, problem, unique

SCOPES = ("earn", "burn", "read", "statements")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def _close(live: Live) -> dict[str, Any]:
    closed: dict[str, Any] = ok(
        live.operator.post("/v1/admin/settlement/close", {"cut_off": _now()}), 201
    )
    return closed


def _statement_of(closed: dict[str, Any], partner: Partner) -> dict[str, Any]:
    found: list[dict[str, Any]] = [s for s in closed["statements"] if s["partner_id"] == partner.id]
    assert len(found) == 1
    return found[0]


def _busy_partner(live: Live, currency: str = "EUR") -> tuple[Partner, str, str]:
    partner = live.partner(currency, scopes=SCOPES)
    member = live.member(partner, 5000)
    burn = ok(
        partner.client.post(
            "/v1/burns", {"member_id": member, "reference": unique(), "points": 120}
        ),
        201,
    )
    return partner, member, burn["id"]


def _verify(tmp_path: Path, name: str, content: bytes, keys: bytes) -> int:
    export = tmp_path / name
    export.write_bytes(content)
    keys_file = tmp_path / "keys.json"
    keys_file.write_bytes(keys)
    return main(["statements", "verify", str(export), "--keys", str(keys_file)])


def test_a_partner_sees_only_its_own_statements_and_finance_sees_all(api: Live) -> None:
    a, _, _ = _busy_partner(api)
    b = api.partner("EUR", scopes=SCOPES)
    closed = _close(api)
    mine = _statement_of(closed, a)
    theirs = _statement_of(closed, b)
    listed = ok(a.client.get("/v1/statements", params={"limit": 500}))["data"]
    assert {s["partner_id"] for s in listed} == {a.id}
    assert mine["id"] in {s["id"] for s in listed}
    document = ok(a.client.get(f"/v1/statements/{mine['id']}"))
    assert document["id"] == mine["id"] and document["content_sha256"] == mine["content_sha256"]
    assert set(document) == {
        "id", "partner_id", "period", "currency", "status", "lines", "totals", "cross_brand",
        "content_sha256", "signature",
    }  # fmt: skip
    msgspec.convert(document, StatementDocument, strict=True)  # the shape defined once
    for path in (
        f"/v1/statements/{theirs['id']}",
        f"/v1/statements/{theirs['id']}/export",
        f"/v1/statements/{theirs['id']}/disputes",
    ):
        problem(a.client.get(path), 404, "not-found")
    problem(a.client.post(f"/v1/statements/{theirs['id']}/acknowledge", {}), 404, "not-found")
    problem(
        a.client.post(f"/v1/statements/{theirs['id']}/disputes", {"reason": "not ours"}),
        404,
        "not-found",
    )
    finance = api.client(api.role_key("finance"))
    assert ok(finance.get(f"/v1/admin/statements/{theirs['id']}"))["partner_id"] == b.id
    seen = ok(finance.get("/v1/admin/statements", params={"period_id": closed["period"]["id"]}))
    assert {a.id, b.id} <= {s["partner_id"] for s in seen["data"]}
    problem(finance.post("/v1/admin/settlement/close", {}), 403, "forbidden")
    no_scope = api.client(api.partner_key(a.id, scopes=("read",)))
    problem(no_scope.get("/v1/statements"), 403, "forbidden")


def test_exports_verify_offline_a_tampered_one_fails_and_rotation_keeps_old_ones_valid(
    live: Live, tmp_path: Path
) -> None:
    partner, _, _ = _busy_partner(live, "BHD")
    first = _statement_of(_close(live), partner)
    json_export = partner.client.get(
        f"/v1/statements/{first['id']}/export", params={"format": "json"}
    )
    csv_export = partner.client.get(
        f"/v1/statements/{first['id']}/export", params={"format": "csv"}
    )
    assert json_export.status_code == csv_export.status_code == 200
    assert csv_export.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert csv_export.text.splitlines()[0].startswith("transaction_id,kind,posted_at")
    assert "# content_sha256," in csv_export.text
    keys = live.client(None).get("/v1/signing-keys")
    assert keys.status_code == 200 and keys.json()[0]["alg"] == "ed25519"
    assert _verify(tmp_path, "s.json", json_export.content, keys.content) == 0
    assert _verify(tmp_path, "s.csv", csv_export.content, keys.content) == 0

    document = json.loads(json_export.content)
    amount = document["lines"][0]["amount"]
    tampered_amount = amount[:-1] + ("1" if amount[-1] != "1" else "2")
    tampered = json_export.content.replace(
        f'"amount":"{amount}"'.encode(), f'"amount":"{tampered_amount}"'.encode(), 1
    )
    assert tampered != json_export.content
    assert _verify(tmp_path, "t.json", tampered, keys.content) == 1
    rows = csv_export.text.splitlines()
    rows[1] = re.sub(
        r",(\d+\.\d+),(true|false)",
        lambda m: (
            f",{m.group(1)[:-1]}9,{m.group(2)}"
            if m.group(1)[-1] != "9"
            else f",{m.group(1)[:-1]}8,{m.group(2)}"
        ),
        rows[1],
    )
    assert rows[1] != csv_export.text.splitlines()[1]
    assert _verify(tmp_path, "t.csv", ("\n".join(rows) + "\n").encode(), keys.content) == 1

    with transaction(session_factory(live.engine)) as s:
        new_key = rotate(s, secret_key=SECRET_KEY, now=dt.datetime.now(dt.UTC))
    after = live.client(None).get("/v1/signing-keys").json()
    assert after[0]["kid"] == new_key.kid and len(after) == len(keys.json()) + 1
    rotated_keys = json.dumps(after).encode()
    assert _verify(tmp_path, "s.json", json_export.content, rotated_keys) == 0
    assert _verify(tmp_path, "s.csv", csv_export.content, rotated_keys) == 0
    ok(partner.client.post("/v1/earns", {"member_id": live.member(partner), "reference": unique(),
                                         "amount": "1.5", "currency": "BHD"}), 201)  # fmt: skip
    second = _statement_of(_close(live), partner)
    signed_now = ok(partner.client.get(f"/v1/statements/{second['id']}"))
    assert signed_now["signature"]["kid"] == new_key.kid
    export = partner.client.get(f"/v1/statements/{second['id']}/export").content
    assert _verify(tmp_path, "n.json", export, rotated_keys) == 0


def test_the_finance_workflow_records_and_enforces_its_transitions(api: Live) -> None:
    partner, _, burn_id = _busy_partner(api)
    closed = _close(api)
    statement = _statement_of(closed, partner)
    sid = statement["id"]
    assert statement["status"] == "issued"
    acknowledged = ok(partner.client.post(f"/v1/statements/{sid}/acknowledge", {}))
    assert acknowledged["status"] == "acknowledged"
    assert acknowledged["issued_sha256"] == statement["issued_sha256"]
    bad = problem(
        partner.client.post(
            f"/v1/statements/{sid}/disputes", {"reason": "?", "transaction_ids": ["txn_NOTONIT"]}
        ),
        422,
        "validation",
    )
    assert bad["errors"][0]["path"] == "$.transaction_ids[0]"
    dispute = ok(
        partner.client.post(
            f"/v1/statements/{sid}/disputes",
            {"reason": "burn billed twice?", "transaction_ids": [burn_id]},
        ),
        201,
    )
    assert dispute["status"] == "open" and dispute["transaction_ids"] == [burn_id]
    assert ok(partner.client.get(f"/v1/statements/{sid}"))["status"] == "disputed"
    problem(
        api.operator.post(
            f"/v1/admin/statements/{sid}/settle",
            {"payment_reference": "PAY-1", "paid_at": _now()},
        ),
        409,
        "statement-closed",
    )
    resolved = ok(
        api.operator.post(
            f"/v1/admin/disputes/{dispute['id']}/resolve",
            {"outcome": "upheld", "note": "refund", "adjustment": "1.25"},
        )
    )
    assert resolved["status"] == "resolved" and resolved["adjustment"] == "1.25"
    problem(
        api.operator.post(f"/v1/admin/disputes/{dispute['id']}/resolve", {"outcome": "rejected"}),
        409,
        "conflict",
    )
    assert ok(partner.client.get(f"/v1/statements/{sid}"))["status"] == "acknowledged"
    finance = api.client(api.role_key("finance"))
    settled = ok(
        finance.post(
            f"/v1/admin/statements/{sid}/settle",
            {"payment_reference": "SEPA-0042", "paid_at": _now()},
        )
    )
    assert settled["status"] == "settled" and settled["payment_reference"] == "SEPA-0042"
    for attempt in (
        partner.client.post(f"/v1/statements/{sid}/acknowledge", {}),
        partner.client.post(f"/v1/statements/{sid}/disputes", {"reason": "late"}),
        finance.post(
            f"/v1/admin/statements/{sid}/settle", {"payment_reference": "X", "paid_at": _now()}
        ),
    ):
        problem(attempt, 409, "statement-closed")
    events = ok(api.operator.get(f"/v1/admin/statements/{sid}/events"))["data"]
    assert [(e["from_status"], e["to_status"]) for e in events] == [
        (None, "issued"),
        ("issued", "acknowledged"),
        ("acknowledged", "disputed"),
        ("disputed", "acknowledged"),
        ("acknowledged", "settled"),
    ]
    assert events[-1]["role"] == "finance" and events[1]["key_id"] == partner.key.key_id
    final = ok(partner.client.get(f"/v1/statements/{sid}"))
    assert final["status"] == "settled" and final["totals"] == statement["totals"]

    next_statement = _statement_of(_close(api), partner)
    document = ok(partner.client.get(f"/v1/statements/{next_statement['id']}"))
    adjustments = [line for line in document["lines"] if line["kind"] == "adjustment"]
    assert [(a["dispute_id"], a["amount"]) for a in adjustments] == [(dispute["id"], "1.25")]
    assert document["totals"]["adjustments_amount"] == "1.25"


def test_the_close_refuses_a_cut_off_in_the_future_and_repeats_the_same_cut_off(
    live: Live,
) -> None:
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    doc = problem(
        live.operator.post("/v1/admin/settlement/close", {"cut_off": future}), 422, "validation"
    )
    assert doc["errors"][0]["path"] == "$.cut_off"
    cut_off = _now()
    first = ok(live.operator.post("/v1/admin/settlement/close", {"cut_off": cut_off}), 201)
    again = ok(live.operator.post("/v1/admin/settlement/close", {"cut_off": cut_off}), 200)
    assert again["period"] == first["period"] and not again["created"]
    periods = ok(live.operator.get("/v1/admin/periods"))["data"]
    assert periods[0]["id"] == first["period"]["id"]
    summary = ok(live.operator.get(f"/v1/admin/periods/{first['period']['id']}/summary"))
    assert summary["points"]["balances"] is True
    matrix = ok(
        live.operator.get(
            "/v1/admin/reports/cross-brand", params={"period_id": first["period"]["id"]}
        )
    )
    assert matrix["period"]["id"] == first["period"]["id"]


@pytest.mark.parametrize("fmt", ["xml"])
def test_an_unknown_export_format_is_a_validation_error(live: Live, fmt: str) -> None:
    partner, _, _ = _busy_partner(live)
    statement = _statement_of(_close(live), partner)
    problem(
        partner.client.get(f"/v1/statements/{statement['id']}/export", params={"format": fmt}),
        422,
        "validation",
    )


def test_a_dispute_reason_with_a_nul_byte_is_a_validation_error_and_changes_nothing(
    live: Live,
) -> None:
    partner, _, _ = _busy_partner(live)
    statement = _statement_of(_close(live), partner)
    doc = problem(
        partner.client.post(
            f"/v1/statements/{statement['id']}/disputes", {"reason": "bad\u0000byte"}
        ),
        422,
        "validation",
    )
    assert doc["errors"][0]["path"] == "$.reason"
    assert ok(partner.client.get(f"/v1/statements/{statement['id']}"))["status"] == "issued"
