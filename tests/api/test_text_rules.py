"""One text rule for every text a partner or the operator sets (coalition/text.py): one line,
no control characters, no bidirectional overrides, trimmed, bounded; and the settlement rules
the console shares with the API: a payment's day within the statement's life, one open dispute
per statement line (under concurrency too)."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.api.conftest import Live, Partner, ok, problem, unique

SCOPES = ("earn", "burn", "read", "statements")
#: Each breaks the rule: a bidi override or isolate, a line break, escape and bell, C1.
HOSTILE = (
    "Acme\u202eRBE 001",
    "Acme\u2066x\u2069",
    "two\nlines",
    "cr\r",
    "esc\x1b[31m bell\x07",
    "c1\x85",
    "sep\u2028",
)


def _now(**delta: float) -> str:
    moment = dt.datetime.now(dt.UTC) + dt.timedelta(**delta)
    return moment.isoformat().replace("+00:00", "Z")


def _statement(live: Live) -> tuple[Partner, str, str]:
    """A partner with an issued statement of one burn line: (partner, statement, burn id)."""
    partner = live.partner("EUR", scopes=SCOPES)
    member = live.member(partner, 5000)
    burn = ok(
        partner.client.post(
            "/v1/burns", {"member_id": member, "reference": unique(), "points": 120}
        ),
        201,
    )
    closed = ok(live.operator.post("/v1/admin/settlement/close", {"cut_off": _now()}), 201)
    (statement,) = [s for s in closed["statements"] if s["partner_id"] == partner.id]
    return partner, statement["id"], burn["id"]


def _refused_at(response: Any, path: str) -> None:
    doc = problem(response, 422, "validation")
    assert [e["path"] for e in doc["errors"]] == [path], doc


@pytest.mark.parametrize("name", HOSTILE)
def test_a_partner_name_breaking_the_text_rule_is_refused(live: Live, name: str) -> None:
    _refused_at(
        live.operator.post("/v1/admin/partners", {"name": name, "currency": "EUR"}), "$.name"
    )
    partner = live.partner("EUR")
    _refused_at(live.operator.patch(f"/v1/admin/partners/{partner.id}", {"name": name}), "$.name")
    assert ok(live.operator.get(f"/v1/admin/partners/{partner.id}"))["name"] != name


def test_texts_are_stored_trimmed(live: Live) -> None:
    made = ok(
        live.operator.post("/v1/admin/partners", {"name": "  Café Ünïcode  ", "currency": "EUR"}),
        201,
    )
    assert made["name"] == "Café Ünïcode"


@pytest.mark.parametrize("reason", HOSTILE)
def test_bonus_and_adjustment_reasons_follow_the_text_rule(live: Live, reason: str) -> None:
    partner = live.partner("EUR")
    member = live.member(partner, 10)
    body = {"member_id": member, "points": 5, "reason": reason, "funded_by": "coalition"}
    _refused_at(live.operator.post("/v1/admin/bonuses", body), "$.reason")
    body = {"member_id": member, "points": 5, "reason": reason}
    _refused_at(live.operator.post("/v1/admin/adjustments", body), "$.reason")


def test_dispute_reasons_and_notes_are_one_line(live: Live) -> None:
    partner, sid, burn_id = _statement(live)
    for reason in HOSTILE:
        _refused_at(
            partner.client.post(f"/v1/statements/{sid}/disputes", {"reason": reason}), "$.reason"
        )
    assert ok(partner.client.get(f"/v1/statements/{sid}"))["status"] == "issued"
    dispute = ok(
        partner.client.post(
            f"/v1/statements/{sid}/disputes",
            {"reason": "billed twice", "transaction_ids": [burn_id]},
        ),
        201,
    )
    for note in HOSTILE:
        _refused_at(
            live.operator.post(
                f"/v1/admin/disputes/{dispute['id']}/resolve", {"outcome": "rejected", "note": note}
            ),
            "$.note",
        )
    assert ok(partner.client.get(f"/v1/statements/{sid}/disputes"))["data"][0]["status"] == "open"


def test_a_payment_day_before_the_period_ended_or_in_the_future_is_refused(live: Live) -> None:
    _, sid, _ = _statement(live)
    url = f"/v1/admin/statements/{sid}/settle"
    for paid_at in ("1970-01-01T00:00:00Z", _now(days=-3), _now(hours=1)):
        _refused_at(
            live.operator.post(url, {"payment_reference": "SEPA-1", "paid_at": paid_at}),
            "$.paid_at",
        )
    for reference in ("SEPA\x00", "SEPA\r\nX", "SEPA\x1b\x07", "SEPA\u202e1"):
        _refused_at(
            live.operator.post(url, {"payment_reference": reference, "paid_at": _now()}),
            "$.payment_reference",
        )
    assert ok(live.operator.get(f"/v1/admin/statements/{sid}"))["status"] == "issued"
    settled = ok(
        live.operator.post(url, {"payment_reference": " SEPA-1 ", "paid_at": _now(minutes=2)})
    )
    assert settled["payment_reference"] == "SEPA-1"


def test_a_line_in_an_open_dispute_cannot_be_disputed_again(live: Live) -> None:
    partner, sid, burn_id = _statement(live)
    url = f"/v1/statements/{sid}/disputes"
    first = ok(partner.client.post(url, {"reason": "twice?", "transaction_ids": [burn_id]}), 201)
    doc = problem(
        partner.client.post(url, {"reason": "again", "transaction_ids": [burn_id]}), 409, "conflict"
    )
    assert first["id"] in doc["detail"] and burn_id in doc["detail"]
    assert doc["dispute_id"] == first["id"]
    assert len(ok(partner.client.get(f"/v1/statements/{sid}/disputes"))["data"]) == 1
    ok(live.operator.post(f"/v1/admin/disputes/{first['id']}/resolve", {"outcome": "rejected"}))
    ok(partner.client.post(url, {"reason": "new evidence", "transaction_ids": [burn_id]}), 201)


def test_two_disputes_of_one_line_racing_make_one(live_pg: Live) -> None:
    partner, sid, burn_id = _statement(live_pg)
    url = f"/v1/statements/{sid}/disputes"

    def dispute(i: int) -> int:
        response = partner.client.post(url, {"reason": f"race {i}", "transaction_ids": [burn_id]})
        return response.status_code

    with ThreadPoolExecutor(4) as pool:
        codes = sorted(pool.map(dispute, range(4)))
    assert codes == [201, 409, 409, 409]
    assert len(ok(partner.client.get(f"/v1/statements/{sid}/disputes"))["data"]) == 1
