"""Fuzz: ``coalition import earns`` reads whatever file it is given. Over arbitrary bytes, and
over arbitrary rows of CSV and NDJSON (cells and keys good, bad and random, references reused,
columns short or long, quoting, line ends), the import never fails with an unexpected
exception: the file is refused as a whole (an empty file, a bad header: nothing written), or
every row is imported, a duplicate, or rejected with a line of the file, in order; what was
imported is exactly what is in the ledger, and nothing is half-written."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from api.bulk import earn_from_fields, earn_from_json
from coalition.db import transaction
from coalition.models import Transaction
from partners.imports import COLUMNS, ImportError_, Summary, import_earns
from tests.conftest import Db

HEADER = ",".join(COLUMNS)
_BREAK = re.compile(r"\r\n|\r|\n")

_REFERENCES = st.sampled_from([f"fz-{n}" for n in range(6)]) | st.text(max_size=8)
_AMOUNTS = st.sampled_from(["1.00", "12.5", "3", "0", "-1", "1e3", "12.505", " 1", "9" * 12])
_CURRENCIES = st.sampled_from(["EUR", "USD", "eur", ""])
_TIMES = st.sampled_from(
    [
        "",
        "2026-01-05T09:00:00Z",
        "2026-01-05T09:00:00+01:00",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "2026-02-30T00:00:00Z",
        "yesterday",
    ]
)


def _cell(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return values | st.text(max_size=10)


def _fields(members: list[str]) -> st.SearchStrategy[dict[str, str]]:
    member = _cell(st.sampled_from([*members, "mem_nobody", ""]))
    return st.fixed_dictionaries(
        {
            "member_id": member,
            "reference": _REFERENCES,
            "amount": _cell(_AMOUNTS),
            "currency": _cell(_CURRENCIES),
            "occurred_at": _cell(_TIMES),
        }
    )


def _csv_rows(members: list[str]) -> st.SearchStrategy[list[str]]:
    return _fields(members).map(lambda f: list(f.values())) | st.lists(
        st.text(max_size=6), max_size=7
    )


def _ndjson_line(members: list[str]) -> st.SearchStrategy[str]:
    def with_repeat(fields: dict[str, str], key: str, value: str) -> str:
        text = json.dumps(fields)
        return text[:-1] + f", {json.dumps(key)}: {json.dumps(value)}}}"

    objects = _fields(members).map(json.dumps)
    repeated = st.builds(
        with_repeat, _fields(members), st.sampled_from(COLUMNS), st.text(max_size=5)
    )
    other = st.dictionaries(st.text(max_size=6), st.none() | st.integers() | st.text(max_size=6))
    return (
        objects
        | repeated
        | other.map(json.dumps)
        | st.text(max_size=30).map(lambda t: _BREAK.sub(" ", t))
    )


def _earns(db: Db) -> tuple[int, int]:
    with transaction(db.sessions) as s:
        row = s.execute(
            select(func.count(), func.coalesce(func.sum(Transaction.points), 0)).where(
                Transaction.kind == "earn"
            )
        ).one()
    return int(row[0]), int(row[1])


class _Run:
    """Imports files into one partner, checking each against the ledger."""

    def __init__(self, db: Db, tmp_path: Path) -> None:
        self.db = db
        self.partner = db.partner("EUR").id
        self.members = [db.member() for _ in range(3)]
        self.path = tmp_path / "fuzz"
        self.db.clock.advance(hours=1)

    def run(self, data: bytes, fmt: str) -> Summary | None:
        """Import ``data``: its summary, or None when the file was refused as a whole; the
        ledger gained exactly what the summary says either way."""
        before = _earns(self.db)
        self.path.write_bytes(data)
        try:
            summary = import_earns(
                self.db.ops,
                self.partner,
                self.path,
                fmt,  # type: ignore[arg-type]
                to_item=earn_from_fields,
                from_json=earn_from_json,
                batch_rows=4,
            )
        except ImportError_:
            assert _earns(self.db) == before
            return None
        count, points = _earns(self.db)
        assert (count - before[0], points - before[1]) == (summary.imported, summary.points)
        assert summary.rows == summary.imported + summary.duplicates + len(summary.rejected)
        lines = [r.line for r in summary.rejected]
        assert lines == sorted(set(lines)) and all(line >= 2 - (fmt == "ndjson") for line in lines)
        assert all(r.code and r.detail for r in summary.rejected)
        return summary


def _checked(db: Db, tmp_path: Path, check: Callable[[_Run], Callable[[], None]]) -> None:
    runner = _Run(db, tmp_path)
    check(runner)()
    db.assert_ledger_ok()


_SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_arbitrary_bytes_never_fail_the_import(db: Db, tmp_path: Path) -> None:
    def check(runner: _Run) -> Callable[[], None]:
        @_SETTINGS
        @given(
            body=st.binary(max_size=600),
            header=st.sampled_from(
                [b"", HEADER.encode() + b"\n", b"\xef\xbb\xbf" + HEADER.encode() + b"\r\n"]
            ),
            fmt=st.sampled_from(["csv", "ndjson"]),
        )
        def run(body: bytes, header: bytes, fmt: str) -> None:
            data = header + body
            summary = runner.run(data, fmt)
            if summary is not None:
                assert all(
                    r.line <= len(_BREAK.findall(data.decode("utf-8", "replace"))) + 1
                    for r in summary.rejected
                )

        return run

    _checked(db, tmp_path, check)


def test_arbitrary_csv_rows_are_each_imported_a_duplicate_or_rejected_at_their_line(
    db: Db, tmp_path: Path
) -> None:
    def check(runner: _Run) -> Callable[[], None]:
        @_SETTINGS
        @given(
            data=st.data(),
            ending=st.sampled_from(["\n", "\r\n"]),
            quote_all=st.booleans(),
        )
        def run(data: st.DataObject, ending: str, quote_all: bool) -> None:
            rows = data.draw(st.lists(_csv_rows(runner.members), max_size=10))
            out = io.StringIO()
            out.write(HEADER + ending)
            starts: list[int] = []
            line = 2
            for row in rows:
                record = io.StringIO()
                # A bare CR in a cell is quoted only when it is in the line end: written
                # bare, it would end a line for every reader.
                every = quote_all or any("\r" in cell for cell in row)
                writer = (
                    csv.writer(record, lineterminator=ending, quoting=csv.QUOTE_ALL)
                    if every
                    else csv.writer(record, lineterminator=ending)
                )
                writer.writerow(row)
                if row:
                    starts.append(line)
                line += len(_BREAK.findall(record.getvalue()))
                out.write(record.getvalue())
            summary = runner.run(out.getvalue().encode("utf-8", "surrogatepass"), "csv")
            assert summary is not None
            assert summary.rows == len(starts)
            assert {r.line for r in summary.rejected} <= set(starts)

        return run

    _checked(db, tmp_path, check)


def test_arbitrary_ndjson_lines_are_each_imported_a_duplicate_or_rejected_at_their_line(
    db: Db, tmp_path: Path
) -> None:
    def check(runner: _Run) -> Callable[[], None]:
        @_SETTINGS
        @given(data=st.data())
        def run(data: st.DataObject) -> None:
            lines = data.draw(st.lists(_ndjson_line(runner.members), max_size=10))
            text = "\n".join(lines) + "\n"
            summary = runner.run(text.encode("utf-8", "surrogatepass"), "ndjson")
            assert summary is not None
            filled = [
                n for n, raw in enumerate(lines, 1) if raw.encode("utf-8", "surrogatepass").strip()
            ]
            assert summary.rows == len(filled)
            assert {r.line for r in summary.rejected} <= set(filled)

        return run

    _checked(db, tmp_path, check)
