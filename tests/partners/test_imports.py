"""Bulk import of a partner's file of earns (``coalition import earns``): every row gets what a
single ``POST /v1/earns`` would, bad rows are reported by line (the header is line 1) with
nothing of them written, duplicates by reference change nothing, and a re-import imports
nothing."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from api.bulk import earn_from_fields, earn_from_json
from coalition.db import transaction
from coalition.models import Transaction
from partners import operation_base
from partners.imports import BATCH_ROWS, ImportError_, Summary, import_earns
from tests.conftest import Db


def _import(
    db: Db, partner_id: str, path: Path, fmt: str = "csv", batch_rows: int = 1000
) -> Summary:
    return import_earns(
        db.ops,
        partner_id,
        path,
        fmt,  # type: ignore[arg-type]
        to_item=earn_from_fields,
        from_json=earn_from_json,
        batch_rows=batch_rows,
    )


def _earns(db: Db) -> int:
    with transaction(db.sessions) as s:
        return int(s.scalar(select(func.count()).where(Transaction.kind == "earn")) or 0)


def _rejected(summary: Summary) -> list[tuple[int, str | None, str]]:
    return [(r.line, r.reference, r.code) for r in summary.rejected]


def test_a_file_with_bad_rows_reports_exactly_those_rows_and_imports_the_rest(
    db: Db, tmp_path: Path
) -> None:
    partner = db.partner("EUR")
    alice, bob = db.member(), db.member()
    path = tmp_path / "earns.csv"
    path.write_text(
        "member_id,reference,amount,currency,occurred_at\n"
        f"{alice},r-1,12.50,EUR,\n"  # line 2: imported, 12 points
        f"{bob},r-2,1.999,EUR,\n"  # line 3: three decimals in EUR
        f"mem_nobody,r-3,5.00,EUR,\n"  # line 4: no such member
        f"{alice},r-4,5.00,USD,\n"  # line 5: not the partner's currency
        "\n"  # line 6: blank, skipped
        f"{bob},r-5,7.00,EUR\n"  # line 7: a cell short
        f"{bob},r-1,3.00,EUR,\n"  # line 8: the reference of line 2 for another earn
        f"{bob},r-6,3.00,EUR,2026-01-05T09:00:00Z\n"  # line 9: imported, 3 points
        f"{bob},r-7\n,3.00,EUR,\n"  # line 10: a reference with a newline (quoted? no: 2 rows)
        f"{bob},r-8,3.00,EUR,yesterday\n"  # line 12: not a time
    )
    summary = _import(db, partner.id, path)
    assert (summary.imported, summary.duplicates, summary.points) == (2, 0, 15)
    assert _rejected(summary) == [
        (3, "r-2", "validation"),
        (4, "r-3", "unknown-member"),
        (5, "r-4", "currency-mismatch"),
        (7, None, "validation"),
        (8, "r-1", "duplicate-reference"),
        (10, None, "validation"),
        (11, None, "validation"),
        (12, "r-8", "validation"),
    ]
    assert _earns(db) == 2
    assert db.ops.balance(alice).available == 12 and db.ops.balance(bob).available == 3
    db.assert_ledger_ok()


def test_a_second_import_of_the_same_file_imports_nothing_and_counts_duplicates(
    db: Db, tmp_path: Path
) -> None:
    partner = db.partner("EUR")
    members = [db.member() for _ in range(5)]
    path = tmp_path / "day.ndjson"
    lines = [
        json.dumps({"member_id": m, "reference": f"n-{i}", "amount": "2.00", "currency": "EUR"})
        for i, m in enumerate(members * 3)
    ]
    path.write_text("\n".join([*lines, "{not json", '{"member_id": 7}']) + "\n")
    first = _import(db, partner.id, path, "ndjson", batch_rows=4)
    assert (first.imported, first.duplicates, first.points) == (15, 0, 30)
    assert _rejected(first) == [(16, None, "validation"), (17, None, "validation")]
    again = _import(db, partner.id, path, "ndjson", batch_rows=4)
    assert (again.imported, again.duplicates, again.points) == (0, 15, 0)
    assert _rejected(again) == _rejected(first)
    assert _earns(db) == 15
    db.assert_ledger_ok()


@pytest.mark.postgres
def test_a_larger_file_imports_every_row_once_in_batches(pg: Db, tmp_path: Path) -> None:
    partner = pg.partner("EUR")
    members = [pg.member() for _ in range(50)]
    rows = 2 * BATCH_ROWS + 500
    path = tmp_path / "big.csv"
    with path.open("w") as out:
        out.write("member_id,reference,amount,currency,occurred_at\n")
        for n in range(rows):
            out.write(f"{members[n % len(members)]},big-{n},1.00,EUR,\n")
    progress: list[tuple[int, int]] = []
    first = import_earns(
        pg.ops,
        partner.id,
        path,
        "csv",
        to_item=earn_from_fields,
        from_json=earn_from_json,
        progress=lambda done, n: progress.append((done, n)),
    )
    assert (first.imported, first.duplicates, first.rejected) == (rows, 0, [])
    assert progress[-1] == (path.stat().st_size, rows) and len(progress) == 3
    again = _import(pg, partner.id, path)
    assert (again.imported, again.duplicates) == (0, rows)
    assert _earns(pg) == rows
    pg.assert_ledger_ok()


def test_the_command_prints_json_and_exits_1_when_a_row_is_rejected(
    lite: Db, tmp_path: Path
) -> None:
    partner = lite.partner("EUR")
    member = lite.member()
    path = tmp_path / "earns.csv"
    path.write_text(
        f"member_id,reference,amount,currency\n{member},c-1,10.00,EUR\n{member},c-2,ten,EUR\n"
        f"{member},c-1,11.00,EUR\n"
    )
    env = {
        **os.environ,
        "COALITION_DATABASE_URL": lite.url,
        "COALITION_SECRET_KEY": base64.urlsafe_b64encode(b"k" * 32).decode().rstrip("="),
    }
    command = [sys.executable, "-m", "cli", "import", "earns", "--partner"]
    run = subprocess.run(
        [*command, partner.id, str(path), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 1, run.stderr
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["imported"] == 1 and out["duplicates"] == 0 and out["points"] == 10
    rejected, conflicting = out["rejected"]
    assert rejected["line"] == 3 and rejected["reference"] == "c-2"
    assert rejected["type"] == "/problems/validation" and "$.amount" in rejected["detail"]
    assert conflicting["line"] == 4 and conflicting["reference"] == "c-1"
    assert conflicting["type"] == "/problems/duplicate-reference"
    assert "for an earn with another amount:" in conflicting["detail"]
    assert "importing earns.csv: 100%" in run.stderr  # plain progress lines off a terminal
    again = subprocess.run(
        [*command, partner.id, str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 1
    assert "0 imported (0 points), 1 duplicates, 2 rejected of 3 rows" in again.stdout
    unknown = subprocess.run(
        [*command, "prt_nobody", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert unknown.returncode == 2 and "no partner" in unknown.stderr


@pytest.mark.parametrize("repeated", ["amount", "member_id", "reference", "occurred_at"])
def test_a_header_that_names_a_column_twice_refuses_the_file_at_line_1(
    lite: Db, tmp_path: Path, repeated: str
) -> None:
    partner = lite.partner("EUR")
    alice, bob = lite.member(), lite.member()
    path = tmp_path / "earns.csv"
    values = {"member_id": bob, "amount": "900.00", "reference": "h-2", "occurred_at": ""}
    path.write_text(
        f"member_id,reference,amount,currency,occurred_at,{repeated}\n"
        f"{alice},h-1,1.00,EUR,,{values[repeated]}\n"
    )
    with pytest.raises(ImportError_, match=rf"^line 1: the column {repeated} appears twice"):
        _import(lite, partner.id, path)
    assert _earns(lite) == 0


def test_a_header_with_a_column_no_earn_has_refuses_the_file_at_line_1(
    lite: Db, tmp_path: Path
) -> None:
    partner = lite.partner("EUR")
    path = tmp_path / "earns.csv"
    path.write_text(f"member_id,reference,amount,currency,points\n{lite.member()},u-1,1,EUR,9\n")
    with pytest.raises(ImportError_, match=r"^line 1: .*points"):
        _import(lite, partner.id, path)
    assert _earns(lite) == 0


@pytest.mark.parametrize("batch_rows", [1, 1000])
def test_a_reference_used_again_for_another_earn_is_rejected_with_its_line(
    db: Db, tmp_path: Path, batch_rows: int
) -> None:
    partner = db.partner("EUR")
    alice, bob = db.member(), db.member()
    path = tmp_path / "earns.csv"
    path.write_text(
        "member_id,reference,amount,currency,occurred_at\n"
        f"{alice},d-1,12.50,EUR,2026-01-05T09:00:00Z\n"  # line 2: imported
        f"{alice},d-1,12.5,EUR,2026-01-05T09:00:00Z\n"  # line 3: the same earn again
        f"{bob},d-1,12.50,EUR,2026-01-05T09:00:00Z\n"  # line 4: another member
        f"{alice},d-1,99.00,EUR,2026-01-05T09:00:00Z\n"  # line 5: another amount
        f"{alice},d-1,12.50,EUR,2026-01-05T10:00:00Z\n"  # line 6: another time
        f"{alice},d-1,12.50,EUR,\n"  # line 7: no time given: the same earn
    )
    db.clock.advance(days=2)
    summary = _import(db, partner.id, path, batch_rows=batch_rows)
    assert (summary.imported, summary.duplicates, summary.points) == (1, 2, 12)
    assert _rejected(summary) == [
        (4, "d-1", "duplicate-reference"),
        (5, "d-1", "duplicate-reference"),
        (6, "d-1", "duplicate-reference"),
    ]
    assert "member_id" in summary.rejected[0].detail and "amount" in summary.rejected[1].detail
    assert "occurred_at" in summary.rejected[2].detail
    again = _import(db, partner.id, path, batch_rows=batch_rows)
    assert (again.imported, again.duplicates) == (0, 3) and _rejected(again) == _rejected(summary)
    assert _earns(db) == 1 and db.ops.balance(bob).available == 0
    db.assert_ledger_ok()


def test_an_ndjson_object_that_names_a_key_twice_is_rejected_at_its_line(
    lite: Db, tmp_path: Path
) -> None:
    partner = lite.partner("EUR")
    alice, bob = lite.member(), lite.member()
    path = tmp_path / "earns.ndjson"
    path.write_text(
        f'{{"member_id":"{alice}","reference":"k-1","amount":"1.00","currency":"EUR"}}\n'
        f'{{"member_id":"{alice}","reference":"k-2","amount":"1.00","currency":"EUR",'
        f'"member_id":"{bob}"}}\n'
        f'{{"member_id":"{alice}","reference":"k-3","amount":"1.00","amount":"900.00",'
        '"currency":"EUR"}\n'
    )
    summary = _import(lite, partner.id, path, "ndjson")
    assert summary.imported == 1
    assert _rejected(summary) == [(2, None, "validation"), (3, None, "validation")]
    assert "$.member_id: this key appears more than once" in summary.rejected[0].detail
    assert lite.ops.balance(bob).available == 0


def test_rows_with_times_or_amounts_past_the_bounds_are_rejected_by_line(
    db: Db, tmp_path: Path
) -> None:
    """A file's rows get the API's one time rule and money bounds: rejected, never a crash."""
    partner = db.partner("EUR", earn="1000")
    alice = db.member()
    path = tmp_path / "edges.csv"
    path.write_text(
        "member_id,reference,amount,currency,occurred_at\n"
        f"{alice},e-1,1.00,EUR,0001-01-01T00:00:00+01:00\n"  # line 2: before year 1 in UTC
        f"{alice},e-2,1.00,EUR,9999-12-31T23:59:59-01:00\n"  # line 3: after year 9999 in UTC
        f"{alice},e-3,1000000000,EUR,\n"  # line 4: 10^12 points worth 10^10 EUR
        f"{alice},e-4,1000000001,EUR,\n"  # line 5: over the amount bound
        f"{alice},e-5,1.00,EUR,\n"  # line 6: imported
    )
    summary = _import(db, partner.id, path)
    assert _rejected(summary) == [
        (2, "e-1", "validation"),
        (3, "e-2", "validation"),
        (4, "e-3", "validation"),
        (5, "e-4", "validation"),
    ]
    assert (summary.imported, summary.points) == (1, 1000)
    db.assert_ledger_ok()


@pytest.mark.postgres
def test_a_reference_a_concurrent_earn_takes_mid_batch_is_that_earn_again(
    pg: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earn of the API that takes a row's reference after the batch looked it up and before
    it wrote fails the batch with the unique key's error; the import runs the batch again and
    the row is the same earn imported again, not a crash."""
    partner = pg.partner("EUR")
    alice, bob = pg.member(), pg.member()
    path = tmp_path / "earns.csv"
    path.write_text(
        "member_id,reference,amount,currency,occurred_at\n"
        f"{alice},r-1,10.00,EUR,\n{bob},r-2,10.00,EUR,\n"
    )
    looked_up = operation_base._find_references
    raced: list[str] = []

    def racing_lookup(*args: object) -> dict[str, str]:
        found = looked_up(*args)  # type: ignore[arg-type]
        if not raced:
            raced.append(
                pg.ops.earn(
                    partner.id, member_id=bob, reference="r-2", amount="10.00", currency="EUR"
                ).transaction.id
            )
        return found

    monkeypatch.setattr("partners.earning._find_references", racing_lookup)
    summary = _import(pg, partner.id, path)
    assert (summary.imported, summary.duplicates, summary.rejected) == (1, 1, [])
    assert _earns(pg) == 2 and pg.ops.balance(bob).available == pg.ops.balance(alice).available
    pg.assert_ledger_ok()
