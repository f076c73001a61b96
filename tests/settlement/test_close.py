"""The close: one period per cut-off, one statement per partner, lines and totals exactly as
docs/settlement.md computes them, the cut-off boundary, and postings after a close."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from coalition.db import transaction
from coalition.errors import ValidationFailed
from settlement.canonical import canonical_json, content_sha256, verify_document
from settlement.signing import public_keys
from tests.conftest import Db
from tests.settlement.helpers import (
    close_at,
    document_totals,
    documents,
    expected_totals,
    ref,
)


def _keys(db: Db) -> dict[str, bytes]:
    with transaction(db.sessions) as s:
        return {k.kid: k.public_key for k in public_keys(s)}


def test_statement_totals_equal_an_independent_recomputation_in_jpy_eur_and_bhd(db: Db) -> None:
    jpy = db.partner("JPY", earn="0.02", issue="1.6", burn="1.5", reimburse="1.25")
    eur = db.partner("EUR", earn="1", issue="0.0095", burn="0.01", reimburse="0.0085")
    bhd = db.partner("BHD", earn="0.5", issue="0.0035", burn="0.004", reimburse="0.0031")
    member = db.member()
    start = db.clock()
    earns = []
    for partner, amounts in ((jpy, ["12345", "9999", "250"]), (eur, ["12.34", "1.99", "105.55"]),
                             (bhd, ["3.333", "17.125"])):  # fmt: skip
        for amount in amounts:
            db.clock.advance(minutes=7)
            earns.append(
                db.ops.earn(
                    partner.id,
                    member_id=member,
                    reference=ref(),
                    amount=amount,
                    currency=partner.currency,
                ).transaction
            )
    db.clock.advance(minutes=3)
    burn = db.ops.burn(jpy.id, member_id=member, reference=ref(), points=37).transaction
    db.ops.burn(bhd.id, member_id=member, reference=ref(), points=5)
    db.ops.reverse(jpy.id, burn.id, reference=ref(), points=11)
    db.ops.reverse(eur.id, earns[3].id, reference=ref(), points=3)
    db.ops.bonus(member_id=member, points=50, reason="welcome", funded_by=eur.id)
    db.ops.bonus(member_id=member, points=20, reason="coalition gift", funded_by="coalition")
    db.clock.advance(hours=1)
    closed = close_at(db, db.clock())
    assert closed.created and len(closed.statements) == 3
    docs = documents(db, closed)
    keys = _keys(db)
    for partner in (jpy, eur, bhd):
        doc = docs[partner.id]
        assert verify_document(doc, keys).ok
        assert document_totals(doc) == expected_totals(
            db, partner.id, partner.currency, closed.period.start_at, closed.period.end_at
        )
        for line in doc["lines"]:
            assert Decimal(line["amount"]) == (
                line["points"] * Decimal(line["unit_price"])
            ).quantize(Decimal(1).scaleb(-{"JPY": 0, "EUR": 2, "BHD": 3}[partner.currency]))
            assert Decimal(line["amount"]) >= 0
    assert docs[jpy.id]["cross_brand"]
    assert closed.period.start_at <= start
    db.assert_ledger_ok()


def test_the_same_cut_off_closes_once_and_a_partner_without_activity_gets_a_zero_statement(
    db: Db,
) -> None:
    active = db.partner("EUR")
    idle = db.partner("JPY")
    db.member(points=100, partner=active)
    db.clock.advance(hours=2)
    cut_off = db.clock() - timedelta(minutes=30)
    first = close_at(db, cut_off)
    again = close_at(db, cut_off)
    assert first.created and not again.created
    assert again.period.id == first.period.id
    assert [s.id for s in again.statements] == [s.id for s in first.statements]
    idle_doc = documents(db, first)[idle.id]
    assert idle_doc["lines"] == [] and idle_doc["totals"]["net_amount"] == "0"
    assert idle_doc["totals"]["direction"] == "none"
    assert documents(db, first)[active.id]["totals"]["direction"] == "partner_pays"


def test_a_cut_off_in_the_future_or_before_the_last_one_is_refused(db: Db) -> None:
    db.partner("EUR")
    db.clock.advance(hours=1)
    with pytest.raises(ValidationFailed) as future:
        close_at(db, db.clock() + timedelta(seconds=1))
    assert future.value.errors[0]["path"] == "cut_off"
    close_at(db, db.clock())
    with pytest.raises(ValidationFailed) as earlier:
        close_at(db, db.clock() - timedelta(minutes=1))
    assert earlier.value.errors[0]["path"] == "cut_off"


def test_a_transaction_posted_exactly_at_the_cut_off_belongs_to_the_later_period(db: Db) -> None:
    partner = db.partner("EUR")
    member = db.member()
    db.clock.advance(hours=1)
    before = db.ops.earn(partner.id, member_id=member, reference=ref(), amount="10",
                         currency="EUR").transaction  # fmt: skip
    db.clock.advance(seconds=1)
    cut_off = db.clock()
    at_cut_off = db.ops.earn(partner.id, member_id=member, reference=ref(), amount="20",
                             currency="EUR").transaction  # fmt: skip
    db.clock.advance(seconds=1)
    first = close_at(db, cut_off)
    assert [line["transaction_id"] for line in documents(db, first)[partner.id]["lines"]] == [
        before.id
    ]
    db.clock.advance(hours=1)
    second = close_at(db, db.clock())
    assert second.period.start_at == cut_off
    lines = documents(db, second)[partner.id]["lines"]
    assert [line["transaction_id"] for line in lines] == [at_cut_off.id]
    assert lines[0]["prior_period"] is False


def test_a_posting_after_the_close_changes_no_issued_statement_and_lands_in_the_next_period(
    db: Db,
) -> None:
    partner = db.partner("EUR")
    member = db.member()
    db.clock.advance(hours=1)
    db.ops.earn(partner.id, member_id=member, reference=ref(), amount="10", currency="EUR")
    cut_off = db.clock() + timedelta(seconds=1)
    db.clock.advance(seconds=2)
    first = close_at(db, cut_off)
    issued = documents(db, first)[partner.id]
    issued_hash = issued["content_sha256"]
    late = db.ops.earn(
        partner.id,
        member_id=member,
        reference=ref(),
        amount="7.77",
        currency="EUR",
        occurred_at=cut_off - timedelta(minutes=10),
    ).transaction
    assert documents(db, first)[partner.id]["content_sha256"] == issued_hash
    assert content_sha256(canonical_json(documents(db, first)[partner.id])) == issued_hash
    db.clock.advance(hours=1)
    second = close_at(db, db.clock())
    lines = documents(db, second)[partner.id]["lines"]
    assert [(line["transaction_id"], line["prior_period"]) for line in lines] == [(late.id, True)]
    assert documents(db, first)[partner.id]["content_sha256"] == issued_hash
    db.assert_ledger_ok()


def test_a_request_in_flight_at_the_cut_off_that_commits_after_the_close_is_billed_next(
    db: Db,
) -> None:
    partner = db.partner("EUR")
    member = db.member()
    db.clock.advance(hours=1)
    cut_off = db.clock()
    db.clock.advance(seconds=5)
    first = close_at(db, cut_off)
    assert documents(db, first)[partner.id]["lines"] == []
    db.clock.now = cut_off - timedelta(milliseconds=3)  # its posted_at was taken before the cut-off
    late = db.ops.earn(
        partner.id, member_id=member, reference=ref(), amount="4", currency="EUR"
    ).transaction
    db.clock.advance(hours=2)
    second = close_at(db, db.clock())
    lines = documents(db, second)[partner.id]["lines"]
    assert [(line["transaction_id"], line["prior_period"]) for line in lines] == [(late.id, True)]
    third = close_at(db, db.clock() + timedelta(seconds=0))
    assert third.period.id == second.period.id
    db.assert_ledger_ok()
