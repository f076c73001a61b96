"""Invariant 5: ``coalition check`` finds a statement whose totals, lines, document or
signature no longer agree with the ledger, and the schema refuses such edits to begin with."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from coalition.db import transaction
from tests.conftest import Db
from tests.settlement.helpers import close_at, ref


def _closed_with_lines(db: Db) -> str:
    partner = db.partner("EUR", issue="0.0095")
    member = db.member()
    for amount in ("10.10", "33.33", "7"):
        db.ops.earn(partner.id, member_id=member, reference=ref(), amount=amount, currency="EUR")
    db.ops.burn(partner.id, member_id=member, reference=ref(), points=12)
    db.clock.advance(hours=1)
    closed = close_at(db, db.clock())
    (statement,) = [s for s in closed.statements if s.partner_id == partner.id]
    return statement.id


def _drop(db: Db, *triggers: str) -> None:
    with transaction(db.sessions) as s:
        for name in triggers:
            s.execute(text(f"DROP TRIGGER {name}"))


def test_invariant_5_holds_after_a_close_and_the_schema_refuses_edits_of_issued_money(
    db: Db,
) -> None:
    statement_id = _closed_with_lines(db)
    db.assert_ledger_ok()
    for sql in (
        "UPDATE statements SET net_minor = net_minor + 1 WHERE id = :id",
        "UPDATE statements SET issued_sha256 = 'x' WHERE id = :id",
        "UPDATE statements SET last_line_id = last_line_id - 1 WHERE id = :id",
        "UPDATE statements SET first_line_id = NULL WHERE id = :id",
        "UPDATE statement_lines SET amount_minor = amount_minor + 1 WHERE statement_id = :id",
        "DELETE FROM statement_lines WHERE statement_id = :id",
        "DELETE FROM statements WHERE id = :id",
    ):
        with pytest.raises(DBAPIError), transaction(db.sessions) as s:
            s.execute(text(sql), {"id": statement_id})
    db.assert_ledger_ok()


def test_invariant_5_reports_totals_that_are_not_the_sums_of_the_lines(lite: Db) -> None:
    statement_id = _closed_with_lines(lite)
    _drop(lite, "statements_issued_update")
    with transaction(lite.sessions) as s:
        s.execute(
            text("UPDATE statements SET net_minor = net_minor + 1 WHERE id = :id"),
            {"id": statement_id},
        )
    found = "\n".join(lite.violations()[5])
    assert "totals != sums of lines" in found and statement_id in found


def test_invariant_5_reports_a_statement_whose_line_range_no_longer_holds_its_lines(
    lite: Db,
) -> None:
    statement_id = _closed_with_lines(lite)
    _drop(lite, "statements_issued_update")
    with transaction(lite.sessions) as s:
        s.execute(
            text("UPDATE statements SET last_line_id = last_line_id - 1 WHERE id = :id"),
            {"id": statement_id},
        )
    found = "\n".join(lite.violations()[5])
    assert f"document lines != stored lines: {statement_id}" in found


def test_invariant_5_reports_a_line_that_does_not_match_its_transaction(lite: Db) -> None:
    statement_id = _closed_with_lines(lite)
    _drop(lite, "statement_lines_append_only_update")
    with transaction(lite.sessions) as s:
        s.execute(
            text(
                "UPDATE statement_lines SET points = points + 1 WHERE id ="
                " (SELECT MIN(id) FROM statement_lines WHERE statement_id = :id)"
            ),
            {"id": statement_id},
        )
    found = "\n".join(lite.violations()[5])
    assert "line does not match its transaction and rate card" in found


def test_invariant_5_reports_a_document_changed_after_issue(lite: Db) -> None:
    statement_id = _closed_with_lines(lite)
    with transaction(lite.sessions) as s:
        s.execute(
            text("UPDATE statements SET document = replace(document, '\"EUR\"', '\"USD\"')"
                 " WHERE id = :id"),
            {"id": statement_id},
        )  # fmt: skip
    found = "\n".join(lite.violations()[5])
    assert f"document does not hash to its content_sha256: {statement_id}" in found
