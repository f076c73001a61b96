"""Bulk import of a partner's file of earns (``coalition import earns``).

A file is CSV with a header row (``member_id,reference,amount,currency,occurred_at``, the last
column optional and its cells possibly empty) or NDJSON (one object with those fields a line).
It is read as a stream and goes to :meth:`~partners.operations.Operations.earn_many` in
batches of :data:`BATCH_ROWS`, each batch one database transaction, so memory stays flat
whatever the file's size. Every row gets what a single ``POST /v1/earns`` would: imported, a
duplicate (its ``reference`` already used for the same earn: nothing changes, so a file can be
imported again), or rejected with the problem type and detail a single earn would get, nothing
of it written. A row whose ``reference`` was used for another earn (another member, amount,
currency or time) is not the same row imported again: it is rejected as
``duplicate-reference``, with its line. Lines are counted from 1, the header included.

A CSV header that names a column twice, or a column an earn does not have, refuses the whole
file at line 1 before anything is imported: which of two ``amount`` cells was meant is not
something to guess. (An NDJSON object that names a key twice is rejected at its line, by the
API's own decoding.)

A batch whose reference a concurrent earn (the API's) took between the batch's look-up and its
write fails with the unique key's error, nothing of it written; it runs again, and the row is
then told apart like any other duplicate (:data:`RETRIES` times at most).

How a row's fields become an :class:`~partners.operations.EarnItem` (the request's shape) is
the caller's ``to_item`` (the CLI passes the API's own decoding), so a file row and a request
body are checked by the very same rules.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from coalition.errors import CoalitionError, DuplicateReference, ValidationFailed
from coalition.ledger import Posted
from coalition.models import Transaction
from coalition.money import parse_amount, to_minor
from partners.operations import EARN_BATCH_MAX, EarnItem, Operations

Format = Literal["csv", "ndjson"]
COLUMNS = ("member_id", "reference", "amount", "currency", "occurred_at")
REQUIRED_COLUMNS = frozenset(COLUMNS[:4])
#: Rows per earn_many call (one transaction each).
BATCH_ROWS = EARN_BATCH_MAX
#: Times a batch runs again after a reference it found free was taken meanwhile (by a
#: concurrent earn: the unique key's error, and nothing of the batch written).
RETRIES = 3
#: The longest line read (a longer one is rejected without being held in memory whole).
MAX_LINE_BYTES = 64 * 1024

#: What a row's fields become: an earn, or the ValidationFailed a request would get.
ToItem = Callable[[dict[str, Any]], EarnItem]
FromJson = Callable[[bytes], EarnItem]


class ImportError_(ValueError):
    """The file as a whole cannot be imported (unreadable, no header, unknown format)."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A row that broke a rule: nothing of it was written."""

    line: int
    reference: str | None
    code: str
    detail: str


@dataclass(slots=True)
class Summary:
    """What an import did."""

    imported: int = 0
    duplicates: int = 0
    points: int = 0
    rows: int = 0
    rejected: list[Rejected] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    reference: str | None
    item: EarnItem | None
    error: CoalitionError | None = None


def format_of(path: Path, given: str | None) -> Format:
    """The file's format: ``given``, or from its extension (``.csv``, ``.ndjson``/``.jsonl``)."""
    chosen = given or {".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson"}.get(
        path.suffix.lower()
    )
    if chosen not in ("csv", "ndjson"):
        raise ImportError_(f"{path}: say --format csv or --format ndjson")
    return chosen  # type: ignore[return-value]


class _Counted(io.RawIOBase):
    """A binary stream that counts the bytes read through it (for progress)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self.raw.readinto(buffer)  # type: ignore[attr-defined]
        self.count += n or 0
        return int(n or 0)


def _csv_rows(stream: io.TextIOBase, to_item: ToItem) -> Iterator[_Row]:
    reader = csv.reader(stream, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise ImportError_("the file is empty: a CSV file starts with its header row") from None
    except csv.Error as exc:
        raise ImportError_(f"line 1: not CSV ({exc})") from None
    names = _header(header)
    line = reader.line_num
    while True:
        start = line + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line = reader.line_num
            yield _Row(start, None, None, ValidationFailed.at("", f"not CSV ({exc})"))
            continue
        line = reader.line_num
        if not cells:
            continue  # a blank line
        if len(cells) != len(names):
            error = ValidationFailed.at("", f"{len(cells)} cells; the header has {len(names)}")
            yield _Row(start, None, None, error)
            continue
        fields = {k: v for k, v in zip(names, cells, strict=True) if k != "occurred_at" or v}
        yield _item(start, fields.get("reference"), partial(to_item, fields))


def _header(header: list[str]) -> list[str]:
    """The column names of a CSV header row: each of :data:`COLUMNS` at most once (a repeated
    one would leave the row's value a guess), the required ones present, no other."""
    names = [name.strip() for name in header]
    if not set(names) >= REQUIRED_COLUMNS or not set(names) <= set(COLUMNS):
        got = ",".join(names)
        shown = repr(got) if len(got) <= 200 else f"{got[:200]!r}..."
        raise ImportError_(f"line 1: the header must be {','.join(COLUMNS)}; got {shown}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ImportError_(f"line 1: the column {name} appears twice in the header")
        seen.add(name)
    return names


def _ndjson_rows(stream: BinaryIO, from_json: FromJson) -> Iterator[_Row]:
    for number, raw in enumerate(iter(lambda: stream.readline(MAX_LINE_BYTES + 1), b""), 1):
        if len(raw) > MAX_LINE_BYTES:
            # Skip the rest of an over-long line without holding it.
            rest = raw
            while rest and not rest.endswith(b"\n"):
                rest = stream.readline(MAX_LINE_BYTES)
            error = ValidationFailed.at("", f"a line may be at most {MAX_LINE_BYTES} bytes")
            yield _Row(number, None, None, error)
            continue
        if not raw.strip():
            continue
        yield _item(number, None, partial(from_json, raw))


def _item(line: int, reference: str | None, make: Callable[[], EarnItem]) -> _Row:
    try:
        item = make()
    except CoalitionError as exc:
        return _Row(line, reference, None, exc)
    return _Row(line, item.reference, item)


def _batches(rows: Iterable[_Row], size: int) -> Iterator[list[_Row]]:
    batch: list[_Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def import_earns(
    ops: Operations,
    partner_id: str,
    path: Path,
    fmt: Format,
    *,
    to_item: ToItem,
    from_json: FromJson,
    progress: Callable[[int, int], None] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Summary:
    """Import ``path`` for ``partner_id`` (module docstring); ``progress(bytes_read, rows)``
    is called after each batch."""
    summary = Summary()
    with path.open("rb") as raw:
        counted = _Counted(raw)
        buffered = io.BufferedReader(counted, buffer_size=1 << 16)
        if fmt == "csv":
            # Bytes that are not UTF-8 become U+FFFD, which no field's shape admits: that row
            # is rejected, the others go on.
            text = io.TextIOWrapper(buffered, encoding="utf-8-sig", errors="replace", newline="")
            rows = _csv_rows(text, to_item)
        else:
            rows = _ndjson_rows(buffered, from_json)
        for batch in _batches(rows, batch_rows):
            _import_batch(ops, partner_id, batch, summary)
            if progress is not None:
                progress(counted.count, summary.rows)
    return summary


def _earn_batch(
    ops: Operations, partner_id: str, items: list[EarnItem]
) -> list[Posted | CoalitionError]:
    """``earn_many`` of the batch, again (from the start) if a reference it found free was
    taken by a concurrent earn before its write: the earlier earn is then what it finds."""
    attempts = 0
    while True:
        try:
            return ops.earn_many(partner_id, items)
        except IntegrityError:
            attempts += 1
            if attempts > RETRIES:
                raise


def _import_batch(ops: Operations, partner_id: str, batch: list[_Row], summary: Summary) -> None:
    items = [row.item for row in batch if row.item is not None]
    results = iter(_conflicts_told_apart(ops, items, _earn_batch(ops, partner_id, items)))
    for row in batch:
        summary.rows += 1
        result: Posted | CoalitionError
        result = next(results) if row.item is not None else row.error  # type: ignore[assignment]
        if isinstance(result, DuplicateReference) and not isinstance(result, _Conflicting):
            summary.duplicates += 1
        elif isinstance(result, CoalitionError):
            summary.rejected.append(Rejected(row.line, row.reference, result.code, result.detail))
        else:
            summary.imported += 1
            summary.points += result.transaction.points


class _Conflicting(DuplicateReference):
    """A row whose reference was used for another earn (another member, amount, currency or
    time): not the same row imported again, so it is rejected with its line."""


def _conflicts_told_apart(
    ops: Operations, items: list[EarnItem], results: list[Posted | CoalitionError]
) -> list[Posted | CoalitionError]:
    """``results`` with each duplicate whose earlier earn says something else than its row
    made a :class:`_Conflicting` (one query for the batch's duplicates)."""
    used = {
        n: str(result.extra["transaction_id"])
        for n, result in enumerate(results)
        if isinstance(result, DuplicateReference)
    }
    if not used:
        return results
    earlier = earns_by_id(ops, used.values())
    told: list[Posted | CoalitionError] = list(results)
    for n, txn_id in used.items():
        differs = earlier[txn_id].differences(items[n])
        if differs:
            told[n] = _Conflicting(
                f"reference {items[n].reference!r} was already used by {txn_id}, for an earn "
                f"with another {' and '.join(differs)}: not this row imported again",
                transaction_id=txn_id,
            )
    return told


@dataclass(frozen=True, slots=True)
class _Earned:
    """What an earlier earn said (to tell a row imported again from a conflicting one)."""

    member_id: str
    amount_minor: int | None
    currency: str | None
    occurred_at: datetime

    def differences(self, item: EarnItem) -> list[str]:
        """The fields of ``item`` that say something else (``occurred_at`` only when the row
        gives one: without it the earn took the time it was first imported)."""
        differs = []
        if item.member_id != self.member_id:
            differs.append("member_id")
        try:
            amount = to_minor(parse_amount(item.amount, item.currency), item.currency)
        except CoalitionError:
            amount = None
        if item.currency != self.currency or amount != self.amount_minor:
            differs.append("amount" if item.currency == self.currency else "currency")
        if item.occurred_at is not None and item.occurred_at != self.occurred_at:
            differs.append("occurred_at")
        return differs


def earns_by_id(ops: Operations, ids: Iterable[str]) -> dict[str, _Earned]:
    """The earlier earns ``ids``: who, how much, when."""
    query = select(
        Transaction.id,
        Transaction.member_id,
        Transaction.amount_minor,
        Transaction.currency,
        Transaction.occurred_at,
    ).where(Transaction.id.in_(sorted(set(ids))))
    with ops.reading() as s:
        return {row.id: _Earned(*row[1:]) for row in s.execute(query)}
