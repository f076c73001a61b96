"""The pgbench script of a request's own SQL (bench/ceiling.py): what it replays must be that
request, made unique per transaction where the request was unique."""

from __future__ import annotations

from datetime import UTC, datetime

from bench.asgi import Recorded
from bench.ceiling import script

T1 = datetime(2026, 12, 1, 9, 0, 0, 123456, tzinfo=UTC)
T2 = datetime(2026, 12, 1, 9, 0, 1, tzinfo=UTC)
NEW = "INSERT INTO t (id, member, at, note, body) VALUES (%(id)s, %(m)s, %(at)s, %(note)s, %(b)s)"
SAME = "SELECT 1 FROM t WHERE id = %(id)s AND note LIKE '%%x'"


def _two() -> tuple[Recorded, Recorded]:
    long_text = "{" + "x" * 300 + "}"
    first = Recorded(
        [
            (NEW, {"id": "txn_A", "m": "mem_1", "at": T1, "note": "a\nb", "b": b"\x01"}),
            (SAME, {"id": "txn_A"}),
            ("SELECT %(big)s, %(n)s", {"big": long_text, "n": 7}),
        ],
        1,
    )
    second = Recorded(
        [
            (NEW, {"id": "txn_B", "m": "mem_2", "at": T2, "note": "a\nb", "b": b"\x02"}),
            (SAME, {"id": "txn_B"}),
            ("SELECT %(big)s, %(n)s", {"big": long_text + " ", "n": 7}),
        ],
        1,
    )
    return first, second


def test_the_script_replays_one_transaction_of_the_request_with_its_unique_values_varied() -> None:
    first, second = _two()
    lines = script(first, second, ("mem_1", "mem_2"), 1000).splitlines()
    assert lines[:4] == [
        "\\set m random(1, 1000)",
        "\\set r random(1, 9000000000000000)",
        "SELECT id AS member FROM bench_members WHERE n = :m \\gset",
        "BEGIN;",
    ]
    assert lines[-1] == "COMMIT;"
    insert, select, last = lines[4:7]
    # the new id varies per transaction, the same way wherever the request used it; the member
    # is the one drawn; a time is the first request's; bytes and equal values are kept
    assert insert == (
        "INSERT INTO t (id, member, at, note, body) VALUES (('v0_' || :r)::varchar, :member, "
        "'2026-12-01T09:00:00.123456+00:00'::timestamptz, E'a\\nb'::varchar, '\\x01'::bytea);"
    )
    assert select == "SELECT 1 FROM t WHERE id = ('v0_' || :r)::varchar AND note LIKE '%x';"
    # a long text (an event's JSON) is kept as the first request sent it
    assert last == "SELECT '{" + "x" * 300 + "}'::varchar, 7;"


def test_a_request_of_one_statement_is_replayed_as_that_statement_alone() -> None:
    # a balance read: one statement, its own transaction (no BEGIN, no COMMIT on the wire)
    first = Recorded([(SAME, {"id": "txn_A"})], 1)
    second = Recorded([(SAME, {"id": "txn_B"})], 1)
    lines = script(first, second, ("mem_1", "mem_2"), 1000).splitlines()
    assert lines[3:] == ["SELECT 1 FROM t WHERE id = ('v0_' || :r)::varchar AND note LIKE '%x';"]
