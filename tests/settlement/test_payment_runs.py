"""Payment runs: credit transfers where the operator pays (pain.001.001.09 in any currency,
SEPA in EUR), SEPA direct debits where a partner with a mandate pays (pain.008.001.08), the rest
skipped with the reason; every file valid against its official XSD; a statement in at most one
live run, also when two runs race; cancelling frees the statements."""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from datetime import date
from importlib.resources import files as package_files

import pytest
import xmlschema
from sqlalchemy import select

from coalition.db import transaction
from coalition.errors import Conflict, PaymentsNotConfigured, ValidationFailed
from settlement.payments import runs
from settlement.payments.models import PaymentItem
from settlement.payments.reconcile import import_statement
from tests.conftest import Db
from tests.settlement.payments_helpers import FINANCE_A, camt, entry, world


def _run(db: Db, statement_ids: list[str] | None = None) -> runs.RunView:
    with transaction(db.sessions) as s:
        return runs.create_run(
            s,
            FINANCE_A,
            statement_ids=statement_ids,
            execution_date=None,
            settings=db.settings,
            now=db.clock(),
        )


def _xsd(format_: str) -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(package_files("sepaxml") / "schemas" / f"{format_}.xsd"))


def _texts(content: bytes, tag: str) -> list[str]:
    namespace = ET.fromstring(content).tag.split("}")[0] + "}"
    return [node.text or "" for node in ET.fromstring(content).iter(namespace + tag)]


def test_each_payment_file_is_valid_against_its_official_xsd_and_names_its_statements(
    db: Db,
) -> None:
    w = world(db)
    made = _run(db)
    assert {f.format for f in made.files} == {"pain.001.001.09", "pain.008.001.08"}
    assert {(f.format, f.currency) for f in made.files} == {
        ("pain.001.001.09", "EUR"),
        ("pain.001.001.09", "JPY"),
        ("pain.008.001.08", "EUR"),
    }
    for stored in made.files:
        assert _xsd(stored.format).is_valid(stored.content.decode()), stored.name
        _xsd(stored.format).validate(stored.content.decode())
    by_currency = {(f.format, f.currency): f.content for f in made.files}
    eur = by_currency["pain.001.001.09", "EUR"]
    assert _texts(eur, "EndToEndId") == [w.paid_eur.id]
    assert _texts(eur, "InstdAmt") == ["20.00"]
    assert _texts(eur, "Cd") == ["SEPA"]  # SEPA rules in EUR
    (remittance,) = _texts(eur, "Ustrd")
    assert w.paid_eur.id in remittance and "period" in remittance
    jpy = by_currency["pain.001.001.09", "JPY"]
    assert _texts(jpy, "InstdAmt") == ["1251"]  # JPY has no decimals
    assert _texts(jpy, "EndToEndId") == [w.paid_jpy.id]
    assert _texts(jpy, "Cd") == []  # no SEPA service level outside EUR
    debit = by_currency["pain.008.001.08", "EUR"]
    assert _texts(debit, "EndToEndId") == [w.debited.id]
    assert _texts(debit, "MndtId") == ["MANDATE-0001"]
    assert _texts(debit, "SeqTp") == ["FRST"]
    assert _texts(debit, "InstdAmt") == ["50.00"]
    assert [(s.statement_id, s.reason) for s in made.items if s.direction == "skipped"] == [
        (w.transfers.id, "the partner pays by its own transfer (no SEPA direct debit mandate)")
    ]


def test_a_statement_is_in_at_most_one_live_run_until_finance_cancels_the_run(db: Db) -> None:
    w = world(db)
    first = _run(db)
    again = _run(db, [w.paid_eur.id])
    assert again.files == []
    assert [(i.direction, i.reason) for i in again.items] == [
        ("skipped", f"already in payment run {first.run.id}")
    ]
    # the default takes only statements in no live run (one skipped stays a candidate)
    assert [(i.statement_id, i.direction) for i in _run(db).items] == [(w.transfers.id, "skipped")]
    with transaction(db.sessions) as s:
        runs.cancel_run(s, first.run.id, FINANCE_A, note="wrong date", now=db.clock())
    with pytest.raises(Conflict), transaction(db.sessions) as s:
        runs.cancel_run(s, first.run.id, FINANCE_A, note=None, now=db.clock())
    later = _run(db)
    assert {i.statement_id for i in later.items if i.direction != "skipped"} == {
        w.paid_eur.id,
        w.paid_jpy.id,
        w.debited.id,
    }
    # the mandate was collected in no live run before: still its first collection
    debit = next(f for f in later.files if f.format == "pain.008.001.08")
    assert _texts(debit.content, "SeqTp") == ["FRST"]


def test_a_run_whose_statement_is_settled_cannot_be_cancelled(db: Db) -> None:
    w = world(db)
    made = _run(db)
    with transaction(db.sessions) as s:
        import_statement(
            s,
            camt([entry(w.paid_eur)]),
            FINANCE_A,
            secret_key=db.settings.secret_key,
            now=db.clock(),
        )
    with pytest.raises(Conflict, match="settled"), transaction(db.sessions) as s:
        runs.cancel_run(s, made.run.id, FINANCE_A, note=None, now=db.clock())


def test_a_run_without_the_operators_account_is_refused_and_changes_nothing(db: Db) -> None:
    world(db)
    db.configure(operator_iban=None, sepa_creditor_id=None)
    with pytest.raises(PaymentsNotConfigured, match="COALITION_OPERATOR_IBAN"):
        _run(db)
    with transaction(db.sessions) as s:
        assert s.scalars(select(PaymentItem)).all() == []


def test_unknown_statements_and_past_execution_dates_are_refused(db: Db) -> None:
    world(db)
    with pytest.raises(ValidationFailed) as caught:
        _run(db, ["stmt_00000000000000000000000000"])
    assert caught.value.errors[0]["path"] == "statement_ids[0]"
    with pytest.raises(ValidationFailed) as caught, transaction(db.sessions) as s:
        runs.create_run(
            s,
            FINANCE_A,
            statement_ids=None,
            execution_date=date(2020, 1, 1),
            settings=db.settings,
            now=db.clock(),
        )
    assert caught.value.errors[0]["path"] == "execution_date"


@pytest.mark.postgres
def test_two_runs_racing_pay_each_statement_once(pg: Db) -> None:
    w = world(pg)
    barrier = threading.Barrier(4)
    made: list[runs.RunView] = []

    def one_run() -> None:
        barrier.wait()
        made.append(_run(pg))

    threads = [threading.Thread(target=one_run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 4
    with transaction(pg.sessions) as s:
        live = s.scalars(select(PaymentItem.statement_id).where(PaymentItem.live)).all()
    assert sorted(live) == sorted([w.paid_eur.id, w.paid_jpy.id, w.debited.id])
