"""The close builds each statement's lines as canonical JSON in SQL: that text is byte for byte
what the Python canonical form writes, for awkward values, on SQLite and PostgreSQL; spliced
into the document it gives the document's canonical JSON."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import func, insert, select

from coalition.db import transaction
from settlement.canonical import canonical_json, canonical_json_with, canonical_value
from settlement.lines import Line, lines_and_totals
from settlement.models import Statement, StatementLine
from tests.conftest import Db

T0 = datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC)
T1 = datetime(2026, 2, 1, 0, 0, 0, 1, tzinfo=UTC)
AWKWARD_ID = 'txn_"quoted"\\back\u00e9\u65e5\u2028\x01\ttab'


def _lines(n: int) -> list[Line]:
    """Six lines, one of each kind (their ids end in ``n``: a transaction is on one line)."""
    return [
        Line(f"txn_a{n}", None, "earn", T0, T0, 2500, Decimal("0.0035"), 9, False),
        Line(f"txn_b{n}", None, "burn", T1, T0, 1, Decimal("0.000000000001"), 0, True),
        Line(f"{AWKWARD_ID}{n}", None, "earn_reversal", T1, T1, 7, Decimal("100"), 700_000, False),
        Line(f"txn_d{n}", None, "bonus", T1, T1, 9_000_000_000, Decimal("1.6"), 1_234_567, True),
        Line(f"txn_e{n}", None, "burn_reversal", T1, T1, 3, Decimal("0.5"), 1, False),
        Line(None, f"dsp_\u00fc\"x{n}", "adjustment", T1, T0, 0, None, -5, True),
    ]  # fmt: skip


def _stored(db: Db, exponent: int) -> tuple[bytes, dict[str, int]]:
    statement = Statement(id=f"stmt_exp{exponent}", currency_exponent=exponent)
    with transaction(db.sessions) as s:
        s.execute(
            insert(StatementLine),
            [{**asdict(line), "statement_id": statement.id} for line in _lines(exponent)],
        )
        # The statement knows the id range of its lines, as the close writes it.
        statement.first_line_id, statement.last_line_id = s.execute(
            select(func.min(StatementLine.id), func.max(StatementLine.id)).where(
                StatementLine.statement_id == statement.id
            )
        ).one()
        written, totals = lines_and_totals(s, statement)
    return written, {
        "lines": totals.lines,
        "issued_points": totals.issued_points,
        "issued_minor": totals.issued_minor,
        "adjustments_minor": totals.adjustments_minor,
    }


def test_the_sql_built_lines_are_the_python_canonical_json_in_bhd_jpy_and_eur(db: Db) -> None:
    for exponent in (3, 0, 2):
        written, totals = _stored(db, exponent)
        expected = b"[" + b",".join(line.canonical(exponent) for line in _lines(exponent)) + b"]"
        assert written == expected
        parsed = json.loads(written)
        assert canonical_value(parsed) == written
        assert [line["amount"] for line in parsed] == {
            3: ["0.009", "0.000", "700.000", "1234.567", "0.001", "-0.005"],
            0: ["9", "0", "700000", "1234567", "1", "-5"],
            2: ["0.09", "0.00", "7000.00", "12345.67", "0.01", "-0.05"],
        }[exponent]
        assert parsed[2]["transaction_id"] == f"{AWKWARD_ID}{exponent}"
        assert [line["posted_at"] for line in parsed[:2]] == [
            "2026-01-31T23:59:59Z",
            "2026-02-01T00:00:00.000001Z",
        ]
        assert [line["unit_price"] for line in parsed] == [
            "0.0035", "0.000000000001", "100", "1.6", "0.5", None,
        ]  # fmt: skip
        assert parsed[5]["dispute_id"] == f'dsp_\u00fc"x{exponent}'
        assert "dispute_id" not in parsed[0]
        assert totals == {
            "lines": 6,
            "issued_points": 9_000_002_500,
            "issued_minor": 1_234_576,
            "adjustments_minor": -5,
        }


def test_a_statement_without_lines_is_an_empty_array_and_zero_totals(db: Db) -> None:
    with transaction(db.sessions) as s:
        written, totals = lines_and_totals(s, Statement(id="stmt_none", currency_exponent=2))
    assert written == b"[]" and totals.lines == 0 and totals.net_minor == 0


def test_lines_spliced_into_a_document_give_its_canonical_json() -> None:
    lines = [{"kind": "earn", "amount": "1.000", "name": "\u00e9\u65e5"}, {"points": -3}]
    document = {
        "status": "issued",
        "id": "stmt_1",
        "cross_brand": [{"points": 1, "origin_partner_id": None}],
        "totals": {"net_amount": "-0.005", "direction": "partner_pays"},
        "content_sha256": "left out",
        "signature": {"value": "left out"},
    }
    spliced = canonical_json_with(document, "lines", canonical_value(lines))
    assert spliced == canonical_json({**document, "lines": lines})


def test_invariant_5_reports_a_line_whose_statement_does_not_exist(lite: Db) -> None:
    with transaction(lite.sessions) as s:
        s.execute(
            insert(StatementLine),
            [{**asdict(_lines(0)[5]), "statement_id": "stmt_missing"}],
        )
    found = "\n".join(lite.violations()[5])
    assert "line without its statement, or not its dispute's adjustment" in found
    assert "stmt_missing" in found
