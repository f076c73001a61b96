"""Bank statements in: an entry that pays a statement exactly settles it (paid_at the booking
day, payment_reference the bank's reference, the entry kept as its payment); a return, a
partial payment, another currency, the wrong direction, an unknown reference and a second
payment wait in the queue with their reason until finance resolves them; the same file twice
changes nothing; bad files change nothing; invariant 7 holds and its check catches a break."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import func, select, text

from coalition.db import transaction
from coalition.errors import Conflict, ValidationFailed
from partners.webhooks.endpoints import Webhooks
from partners.webhooks.tables import WebhookEvent
from settlement.bankfiles import MAX_BANK_FILE_BYTES
from settlement.payments import reconcile
from settlement.payments.models import BankEntry, BankStatementFile, StatementPayment
from tests.conftest import Db
from tests.settlement.payments_helpers import FINANCE_A, FINANCE_B, camt, entry, statement_of, world


def _import(db: Db, data: bytes) -> reconcile.BankStatementImported:
    with transaction(db.sessions) as s:
        done = reconcile.import_statement(
            s, data, FINANCE_A, secret_key=db.settings.secret_key, now=db.clock()
        )
        return reconcile.imported_out(done)


def _counts(db: Db) -> tuple[int, int, int]:
    with transaction(db.sessions) as s:
        return (
            s.scalar(select(func.count()).select_from(BankStatementFile)) or 0,
            s.scalar(select(func.count()).select_from(BankEntry)) or 0,
            s.scalar(select(func.count()).select_from(StatementPayment)) or 0,
        )


def test_an_exact_payment_settles_its_statement_with_the_entry_as_evidence(db: Db) -> None:
    w = world(db)
    booked = date(2026, 1, 5)
    result = _import(
        db,
        camt(
            [
                entry(w.paid_eur, reference="ACCTSVCR-1", booking=booked),
                # the partner's own transfer names the statement in its remittance text only
                entry(w.transfers, end_to_end_id=None, remittance=f"Coalition {w.transfers.id}"),
            ]
        ),
    )
    assert result.unmatched == [] and result.duplicate is False
    settled = statement_of(db, w.paid_eur.id)
    assert settled.status == "settled"
    assert settled.paid_at == datetime(2026, 1, 5, tzinfo=UTC)
    assert settled.payment_reference == "ACCTSVCR-1"
    assert statement_of(db, w.transfers.id).status == "settled"
    with transaction(db.sessions) as s:
        payment = s.get_one(StatementPayment, w.paid_eur.id)
        assert payment.kind == "bank_entry" and payment.bank_entry_id is not None
        evidence = s.get_one(BankEntry, payment.bank_entry_id)
        assert evidence.status == "matched" and evidence.statement_id == w.paid_eur.id
    db.assert_ledger_ok()


def test_without_an_acctsvcrref_the_reference_is_the_end_to_end_id(db: Db) -> None:
    w = world(db)
    data = camt([replace(entry(w.debited), bank_reference=None)])
    _import(db, data)
    assert statement_of(db, w.debited.id).payment_reference == w.debited.id


def test_everything_else_waits_in_the_queue_with_its_reason(db: Db) -> None:
    w = world(db)
    _import(db, camt([entry(w.paid_eur)], "FIRST"))
    result = _import(
        db,
        camt(
            [
                entry(w.debited, amount_minor=1000),  # a partial payment
                entry(w.paid_eur, reversal=True, return_reason="AC04", credit=True),  # a return
                entry(w.transfers, credit=False),  # the wrong way
                entry(w.paid_eur),  # a second payment of a settled statement
                entry(w.transfers, end_to_end_id="ORDER-77", remittance="no reference"),
            ],
            "SECOND",
        ),
    )
    reasons = [str(u.reason) for u in result.unmatched]
    assert len(reasons) == 5
    assert reasons[0].startswith("amount differs: the entry is 10.00 EUR")
    assert reasons[1].startswith("return (AC04)") and w.paid_eur.id in reasons[1]
    assert reasons[2].startswith("direction differs")
    assert reasons[3].startswith("would settle twice")
    assert reasons[4].startswith("unknown reference")
    jpy = _import(db, camt([entry(w.paid_jpy, currency="EUR", amount_minor=125100)], "THIRD"))
    (other,) = jpy.unmatched
    assert str(other.reason).startswith("currency differs: the entry is in EUR")
    with transaction(db.sessions) as s:
        waiting = reconcile.queue(s).rows
    assert len(waiting) == 6
    assert statement_of(db, w.debited.id).status == "acknowledged"
    db.assert_ledger_ok()


def test_finance_resolves_a_waiting_entry_by_matching_it_or_dismissing_it(db: Db) -> None:
    w = world(db)
    result = _import(
        db, camt([entry(w.debited, amount_minor=4999), entry(w.paid_eur, end_to_end_id="X")])
    )
    partial, unknown = (u.entry for u in result.unmatched)
    with transaction(db.sessions) as s:
        done = reconcile.resolve(
            s,
            partial,
            FINANCE_B,
            statement_id=w.debited.id,
            note="the bank kept a cent in fees; agreed with the partner",
            secret_key=db.settings.secret_key,
            now=db.clock(),
        )
        assert done.status == "resolved"
    assert statement_of(db, w.debited.id).status == "settled"
    with transaction(db.sessions) as s:
        dismissed = reconcile.resolve(
            s,
            unknown,
            FINANCE_B,
            statement_id=None,
            note="another business's payment; returned",
            secret_key=db.settings.secret_key,
            now=db.clock(),
        )
        assert dismissed.status == "dismissed" and dismissed.reason is not None
    with pytest.raises(Conflict), transaction(db.sessions) as s:
        reconcile.resolve(
            s,
            unknown,
            FINANCE_B,
            statement_id=None,
            note="again",
            secret_key=db.settings.secret_key,
            now=db.clock(),
        )
    with transaction(db.sessions) as s:
        assert reconcile.queue(s).rows == []
    db.assert_ledger_ok()


def test_the_same_file_imported_twice_changes_nothing(db: Db) -> None:
    w = world(db)
    data = camt([entry(w.paid_eur), entry(w.debited, amount_minor=1)])
    first = _import(db, data)
    before = _counts(db)
    second = _import(db, data)
    assert second.duplicate is True and second.id == first.id
    assert second.matched == first.matched and second.unmatched == first.unmatched
    assert _counts(db) == before


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("malformed XML", b"<?xml version='1.0'?><Document><BkToCstmrStmt>"),
        (
            "another message type",
            b'<?xml version="1.0"?><Document xmlns="urn:iso:std:iso:20022:tech:xsd:'
            b'pain.001.001.09"><CstmrCdtTrfInitn/></Document>',
        ),
        (
            "an XML bomb",
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 '
            b'"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><Document>&lol2;</Document>',
        ),
        ("over 16 MiB", b"<" + b" " * MAX_BANK_FILE_BYTES),
        ("empty", b""),
    ],
)
def test_a_bad_file_is_refused_and_changes_nothing(db: Db, name: str, data: bytes) -> None:
    world(db)
    before = _counts(db)
    with pytest.raises(ValidationFailed):
        _import(db, data)
    assert _counts(db) == before, name


def test_a_settlement_by_the_bank_tells_the_partner(db: Db) -> None:
    w = world(db)
    hooks = Webhooks(
        db.settings.secret_key, allow_private=True, resolver=lambda h, p: ["127.0.0.1"]
    )
    with transaction(db.sessions) as s:
        hooks.create(
            s,
            w.paid_eur.partner_id,
            url="http://127.0.0.1:9/hook",
            events=["statement.settled"],
            description=None,
            now=db.clock(),
        )
    _import(db, camt([entry(w.paid_eur)]))
    with transaction(db.sessions) as s:
        types = s.scalars(
            select(WebhookEvent.type).where(WebhookEvent.partner_id == w.paid_eur.partner_id)
        ).all()
    assert types == ["statement.settled"]


def test_invariant_7_catches_a_settled_statement_without_a_payment(db: Db) -> None:
    w = world(db)
    _import(db, camt([entry(w.paid_eur)]))
    db.assert_ledger_ok()
    with transaction(db.sessions) as s:
        s.execute(text("DELETE FROM statement_payments"))
    violations = db.violations()
    assert set(violations) == {7}
    assert any(w.paid_eur.id in v for v in violations[7])
