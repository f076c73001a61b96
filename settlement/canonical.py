"""The statement document's canonical form, its hash and signature, and the two exports.

Pure functions (no database): ``coalition statements verify`` runs offline on them.

- canonical JSON: the document without ``content_sha256`` and ``signature``, keys sorted at
  every level, no whitespace, UTF-8 (non-ASCII characters as themselves, not ``\\u`` escapes);
  there are no floats in a statement (points are integers, money and prices decimal strings);
- ``content_sha256``: SHA-256 (hex, lower case) of those bytes;
- ``signature.value``: the base64url (no padding) Ed25519 signature of the same bytes;
- the CSV export: a header row, one row per line, then ``#`` comment rows that carry every
  other field of the document, so the canonical bytes can be rebuilt from the CSV alone;
- reading an export back (:func:`read_export`) accepts a file only when it is byte for byte
  what :func:`json_export` or :func:`csv_export` writes for the document read from it (a
  UTF-8 byte order mark in front set aside, and said so): a hash that holds says nothing of
  what a reader of the file sees (a row or a key given twice, a field no export has).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from partners.keys import b64url, b64url_decode
from settlement.document import (
    CrossBrandRow,
    PeriodRef,
    StatementDocument,
    StatementLineOut,
    StatementSignature,
    StatementTotals,
    fields_of,
    plain,
)

SIGNATURE_ALG: Final = "ed25519"
#: The columns of the CSV export, in order: a line's fields (``dispute_id`` only on adjustment
#: lines).
CSV_COLUMNS = fields_of(StatementLineOut)
TOTALS = fields_of(StatementTotals)
#: The totals that are points (integers); every other total is a decimal string.
POINT_TOTALS = tuple(f.name for f in msgspec.structs.fields(StatementTotals) if f.type is int)
#: The fields of a signed document that its canonical JSON leaves out.
UNSIGNED = ("content_sha256", "signature")
#: The largest export ``verify`` reads (a bound on everything).
MAX_EXPORT_BYTES = 512 * 1024 * 1024


def canonical_value(value: Any) -> bytes:
    """Any JSON value in canonical form: keys sorted at every level, no whitespace, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """The canonical bytes of ``document`` (without its ``content_sha256`` and ``signature``)."""
    return canonical_value({k: v for k, v in document.items() if k not in UNSIGNED})


def canonical_json_with(document: Mapping[str, Any], key: str, canonical: bytes) -> bytes:
    """:func:`canonical_json` of ``document`` with ``document[key]`` the value whose canonical
    bytes are ``canonical``, spliced in as they are (the close's lines arrive as canonical text
    built in SQL, never as Python objects)."""
    parts = {k: canonical_value(v) for k, v in document.items() if k not in UNSIGNED}
    parts[key] = canonical
    return b"{" + b",".join(canonical_value(k) + b":" + parts[k] for k in sorted(parts)) + b"}"


def content_sha256(canonical: bytes) -> str:
    """The content hash of canonical bytes (hex)."""
    return hashlib.sha256(canonical).hexdigest()


def signature_part(kid: str, value: str) -> dict[str, Any]:
    """A document's ``signature`` (:class:`~settlement.document.StatementSignature`) as plain
    values: the Ed25519 signature ``value`` (base64url) by key ``kid``."""
    part: dict[str, Any] = plain(StatementSignature(SIGNATURE_ALG, kid, value))
    return part


def signed_document(document: Mapping[str, Any], kid: str, signature: bytes) -> dict[str, Any]:
    """The document with its content hash and signature added."""
    canonical = canonical_json(document)
    return {
        **document,
        "content_sha256": content_sha256(canonical),
        "signature": signature_part(kid, b64url(signature)),
    }


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether an export verified, and why not."""

    ok: bool
    reason: str


def verify_document(document: Mapping[str, Any], public_keys: Mapping[str, bytes]) -> Verdict:
    """Check a signed statement document: its content hash, then its signature with the key
    named by ``signature.kid`` among ``public_keys`` (kid -> raw 32-byte Ed25519 key)."""
    claimed = document.get("content_sha256")
    signature = document.get("signature")
    if not isinstance(claimed, str) or not isinstance(signature, dict):
        return Verdict(False, "the document has no content_sha256 or no signature")
    canonical = canonical_json(document)
    actual = content_sha256(canonical)
    if actual != claimed:
        return Verdict(
            False, f"content hash mismatch: the content hashes to {actual}, not {claimed}"
        )
    if signature.get("alg") != SIGNATURE_ALG:
        return Verdict(False, f"unsupported signature alg {signature.get('alg')!r}")
    kid = signature.get("kid")
    public = public_keys.get(kid) if isinstance(kid, str) else None
    if public is None:
        return Verdict(False, f"no public key with kid {kid!r} among {len(public_keys)} known")
    try:
        value = b64url_decode(str(signature.get("value", "")))
        Ed25519PublicKey.from_public_bytes(public).verify(value, canonical)
    except (ValueError, InvalidSignature):
        return Verdict(False, f"the signature does not verify with key {kid}")
    return Verdict(True, f"content hash {actual} and signature by {kid} verify")


# --- exports ------------------------------------------------------------------------------


def json_export(document: Mapping[str, Any]) -> bytes:
    """The JSON export: the signed document as canonical JSON (its hash and signature included),
    followed by a newline."""
    return (
        json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        + b"\n"
    )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def csv_export(document: Mapping[str, Any]) -> bytes:
    """The CSV export: header, one row per line, and ``#`` rows with every other field."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for line in document["lines"]:
        writer.writerow([_cell(line.get(column)) for column in CSV_COLUMNS])
    period = document["period"]
    trailer: list[Sequence[Any]] = [
        ("# id", document["id"]),
        ("# partner_id", document["partner_id"]),
        ("# period", period["id"], period["start"], period["end"]),
        ("# currency", document["currency"]),
        ("# status", document["status"]),
        *((f"# totals.{name}", document["totals"][name]) for name in TOTALS),
        *(
            ("# cross_brand", _cell(row["origin_partner_id"]), row["points"])
            for row in document["cross_brand"]
        ),
        ("# content_sha256", document["content_sha256"]),
        (
            "# signature",
            document["signature"]["alg"],
            document["signature"]["kid"],
            document["signature"]["value"],
        ),
    ]
    for row in trailer:
        writer.writerow([_cell(v) for v in row])
    return out.getvalue().encode("utf-8")


class ExportError(ValueError):
    """A file that is not, byte for byte, a statement export of the service."""


#: The fields of a statement document and of its parts: an export holds exactly these (a
#: line's ``dispute_id`` only on an adjustment line).
DOCUMENT_KEYS = fields_of(StatementDocument)
PERIOD_KEYS = fields_of(PeriodRef)
SIGNATURE_KEYS = fields_of(StatementSignature)
CROSS_BRAND_KEYS = fields_of(CrossBrandRow)
#: What a spreadsheet puts in front of a UTF-8 file it saves; :func:`read_export` sets it aside.
UTF8_BOM = b"\xef\xbb\xbf"
BOM_NOTE = (
    "the file starts with a UTF-8 byte order mark (a spreadsheet adds one when it saves a "
    "file), which was set aside: the rest is byte for byte the export"
)


@dataclass(frozen=True, slots=True)
class Export:
    """A statement export as read: its signed document, which export it is (``json`` or
    ``csv``), and what was set aside to read it (:data:`BOM_NOTE`)."""

    document: dict[str, Any]
    format: str
    notes: tuple[str, ...] = ()


def read_export(data: bytes) -> Export:
    """The signed document of an export, JSON or CSV (told apart by the first byte), read
    strictly; :class:`ExportError` unless the file is exactly what :func:`json_export` or
    :func:`csv_export` writes for the document it holds. A UTF-8 byte order mark in front is
    the one thing set aside (and said so in ``notes``); nothing else is tolerated: a key or a
    row twice, a row or a field the export does not have, other line ends, whitespace, quoting
    or encoding are all refused, so what a reader of the file sees is what was signed."""
    if len(data) > MAX_EXPORT_BYTES:
        raise ExportError(f"larger than {MAX_EXPORT_BYTES} bytes")
    notes: tuple[str, ...] = ()
    if data.startswith(UTF8_BOM):
        data, notes = data[len(UTF8_BOM) :], (BOM_NOTE,)
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ExportError(
            "the file is UTF-16 (it was saved again, by a spreadsheet or an editor?): an export "
            "is UTF-8; verify the file as it was downloaded"
        )
    if data[:1] == b"{":
        document, fmt, writer = _parse_json_export(data), "json", json_export
    else:
        document, fmt, writer = parse_csv_export(data), "csv", csv_export
    expected = writer(document)
    if data != expected:
        raise ExportError(_difference(data, expected, fmt))
    return Export(document, fmt, notes)


def _difference(data: bytes, expected: bytes, fmt: str) -> str:
    """Why ``data`` is not the export ``expected`` of the document read from it."""
    saved = "it was changed, or saved again by another program; verify the file as downloaded"
    if b"\r\n" in data and data.replace(b"\r\n", b"\n") == expected:
        return f"the lines of the file end in CR LF, the export's in LF: {saved}"
    got, want = data.split(b"\n"), expected.split(b"\n")
    line = next(
        (n for n, (a, b) in enumerate(zip(got, want, strict=False), 1) if a != b),
        min(len(got), len(want)),
    )
    return (
        f"not byte for byte the {fmt.upper()} export of the statement it holds (the first "
        f"difference is on line {line}): {saved}"
    )


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: an object that names a key twice is refused (a reader of the file
    may see the first value, the JSON decoder keeps the last)."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ExportError(
                f"not a JSON statement export: the key {key!r} appears twice in one object"
            )
        seen.add(key)
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ExportError(f"not a JSON statement export: {name} is not a JSON value")


def _parse_json_export(data: bytes) -> dict[str, Any]:
    try:
        document = json.loads(
            data.decode("utf-8"), object_pairs_hook=_unique_pairs, parse_constant=_no_constant
        )
    except ExportError:
        raise
    except UnicodeDecodeError as exc:
        raise ExportError(f"not a JSON statement export: not UTF-8 ({exc})") from None
    except (ValueError, RecursionError) as exc:
        raise ExportError(f"not a JSON statement export: {exc}") from None
    _check_shape(document)
    return document  # type: ignore[no-any-return]


def _fields(value: Any, keys: Sequence[str], where: str) -> None:
    if not isinstance(value, dict):
        raise ExportError(f"not a statement export: {where} is not an object")
    if unknown := [k for k in value if k not in keys]:
        raise ExportError(
            f"not a statement export: {where} has a field no export has: {unknown[0]}"
        )
    if missing := [k for k in keys if k not in value]:
        raise ExportError(f"not a statement export: {where} has no {missing[0]}")


def _check_shape(document: Any) -> None:
    """Exactly the fields of a statement document, at every level (:data:`DOCUMENT_KEYS`...):
    in particular nothing beside the signature's own fields, which the content hash does not
    cover."""
    _fields(document, DOCUMENT_KEYS, "$")
    _fields(document["period"], PERIOD_KEYS, "$.period")
    _fields(document["totals"], TOTALS, "$.totals")
    _fields(document["signature"], SIGNATURE_KEYS, "$.signature")
    for name in ("lines", "cross_brand"):
        if not isinstance(document[name], list):
            raise ExportError(f"not a statement export: $.{name} is not a list")
    for n, line in enumerate(document["lines"]):
        adjustment = isinstance(line, dict) and line.get("kind") == "adjustment"
        _fields(line, CSV_COLUMNS if adjustment else CSV_COLUMNS[:-1], f"$.lines[{n}]")
    for n, row in enumerate(document["cross_brand"]):
        _fields(row, CROSS_BRAND_KEYS, f"$.cross_brand[{n}]")
    unsigned = [document["content_sha256"], *document["signature"].values()]
    if not all(isinstance(v, str) for v in unsigned):
        raise ExportError("not a statement export: its content_sha256 and signature are not text")


def _line_from_row(row: Mapping[str, str]) -> dict[str, Any]:
    line: dict[str, Any] = {
        "transaction_id": row["transaction_id"] or None,
        "kind": row["kind"],
        "posted_at": row["posted_at"],
        "occurred_at": row["occurred_at"],
        "points": int(row["points"]),
        "unit_price": row["unit_price"] or None,
        "amount": row["amount"],
        "prior_period": {"true": True, "false": False}[row["prior_period"]],
    }
    if row["kind"] == "adjustment":
        line["dispute_id"] = row["dispute_id"] or None
    return line


#: The ``#`` rows of the CSV export after its lines, in order, with how many values each
#: carries (``# cross_brand`` rows, any number of them, come before ``# content_sha256``).
_TRAILER = (
    ("id", 1),
    ("partner_id", 1),
    ("period", 3),
    ("currency", 1),
    ("status", 1),
    *((f"totals.{name}", 1) for name in TOTALS),
)
_TRAILER_END = (("content_sha256", 1), ("signature", 3))
_CROSS_BRAND = "cross_brand"


class _Rows:
    """The rows of a CSV export with their line numbers, read one at a time."""

    def __init__(self, text: str) -> None:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        self.rows = [(reader.line_num, row) for row in reader]
        self.at = 0
        self.seen: set[str] = set()

    def peek(self) -> list[str] | None:
        return self.rows[self.at][1] if self.at < len(self.rows) else None

    def line(self) -> int:
        return self.rows[self.at][0] if self.at < len(self.rows) else self.rows[-1][0] + 1

    def take(self, name: str, values: int) -> list[str]:
        """The row ``# name`` with its ``values``, which must come next."""
        row, line = self.peek(), self.line()
        if row is None:
            raise ExportError(f"the file ends before its row '# {name}'")
        found = row[0] if row else ""
        if found != f"# {name}":
            if found.startswith("#") and found.removeprefix("#").strip() in self.seen:
                raise ExportError(f"line {line}: the row {found!r} appears a second time")
            if found.startswith("#"):
                raise ExportError(
                    f"line {line}: {found!r} is not a row of a statement export here "
                    f"(the row '# {name}' comes next)"
                )
            raise ExportError(f"line {line}: the row '# {name}' was expected, not a line")
        if len(row) != values + 1:
            raise ExportError(
                f"line {line}: the row '# {name}' has {len(row) - 1} values, not {values}"
            )
        self.seen.add(name)
        self.at += 1
        return row[1:]


def parse_csv_export(data: bytes) -> dict[str, Any]:
    """Rebuild the signed document from a CSV export, strictly: the header, the lines (every
    cell once), then each ``#`` row once in the exporter's order and nothing after; the
    document rebuilt is checked against the file byte for byte by :func:`read_export`.
    :class:`ExportError` if malformed, naming the line."""
    try:
        rows = _Rows(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ExportError(f"not a CSV statement export: not UTF-8 ({exc})") from None
    except csv.Error as exc:
        raise ExportError(f"not a CSV statement export: {exc}") from None
    if tuple(rows.peek() or ()) != CSV_COLUMNS:
        raise ExportError(
            "not a CSV statement export: the header row is not " + ",".join(CSV_COLUMNS)
        )
    rows.at = 1
    lines: list[dict[str, Any]] = []
    try:
        while (row := rows.peek()) is not None and not (row and row[0].startswith("#")):
            if len(row) != len(CSV_COLUMNS):
                raise ExportError(
                    f"line {rows.line()}: {len(row)} cells, where a statement line has "
                    f"{len(CSV_COLUMNS)}"
                )
            lines.append(_line_from_row(dict(zip(CSV_COLUMNS, row, strict=True))))
            rows.at += 1
        fields = {name: rows.take(name, values) for name, values in _TRAILER}
        cross_brand: list[dict[str, Any]] = []
        while (row := rows.peek()) is not None and row[:1] == [f"# {_CROSS_BRAND}"]:
            origin, points = rows.take(_CROSS_BRAND, 2)
            cross_brand.append({"origin_partner_id": origin or None, "points": int(points)})
        fields.update((name, rows.take(name, values)) for name, values in _TRAILER_END)
        if rows.peek() is not None:
            raise ExportError(
                f"line {rows.line()}: a row after '# signature', which ends an export"
            )
    except ExportError:
        raise
    except (KeyError, ValueError) as exc:
        raise ExportError(
            f"line {rows.line()}: not a statement export row ({type(exc).__name__}: {exc})"
        ) from None
    totals: dict[str, Any] = {}
    for name in TOTALS:
        raw = fields[f"totals.{name}"][0]
        try:
            totals[name] = int(raw) if name in POINT_TOTALS else raw
        except ValueError:
            raise ExportError(
                f"not a CSV statement export: totals.{name} is not a number"
            ) from None
    period_id, start, end = fields["period"]
    alg, kid, value = fields["signature"]
    return {
        "id": fields["id"][0],
        "partner_id": fields["partner_id"][0],
        "period": {"id": period_id, "start": start, "end": end},
        "currency": fields["currency"][0],
        "status": fields["status"][0],
        "lines": lines,
        "totals": totals,
        "cross_brand": cross_brand,
        "content_sha256": fields["content_sha256"][0],
        "signature": {"alg": alg, "kid": kid, "value": value},
    }


def parse_keys(data: bytes) -> dict[str, bytes]:
    """Public keys from a saved answer of ``GET /v1/signing-keys``: kid -> raw key."""
    try:
        answer = json.loads(data.decode("utf-8"))
        items = answer["data"] if isinstance(answer, dict) else answer
        keys = {}
        for item in items:
            if item["alg"] != SIGNATURE_ALG:
                continue
            raw = b64url_decode(item["public_key"])
            if len(raw) != 32:
                raise ValueError(f"key {item['kid']} is not 32 bytes")
            keys[str(item["kid"])] = raw
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"not a signing-keys file: {exc}") from None
    return keys
