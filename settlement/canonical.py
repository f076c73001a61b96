"""The statement document's canonical form, its hash and signature, and the two exports.

Pure functions (no database): ``coalition statements verify`` runs offline on them.

- canonical JSON: the document without ``content_sha256`` and ``signature``, keys sorted at
  every level, no whitespace, UTF-8 (non-ASCII characters as themselves, not ``\\u`` escapes);
  there are no floats in a statement (points are integers, money and prices decimal strings);
- ``content_sha256``: SHA-256 (hex, lower case) of those bytes;
- ``signature.value``: the base64url (no padding) Ed25519 signature of the same bytes;
- the CSV export: a header row, one row per line, then ``#`` comment rows that carry every
  other field of the document, so the canonical bytes can be rebuilt from the CSV alone.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SIGNATURE_ALG = "ed25519"
#: The columns of the CSV export, in order (``dispute_id`` only on adjustment lines).
CSV_COLUMNS = (
    "transaction_id",
    "kind",
    "posted_at",
    "occurred_at",
    "points",
    "unit_price",
    "amount",
    "prior_period",
    "dispute_id",
)
#: The totals that are points (integers); every other total is a decimal string.
POINT_TOTALS = ("issued_points", "redeemed_points")
TOTALS = (
    "issued_points",
    "issued_amount",
    "earn_reversed_amount",
    "redeemed_points",
    "reimbursed_amount",
    "burn_reversed_amount",
    "adjustments_amount",
    "net_amount",
    "direction",
)
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


def b64url(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64url_decode(text: str) -> bytes:
    """base64url with or without padding; ValueError on other characters."""
    if any(c in text for c in "+/ \n\r\t"):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signed_document(document: Mapping[str, Any], kid: str, signature: bytes) -> dict[str, Any]:
    """The document with its content hash and signature added."""
    canonical = canonical_json(document)
    return {
        **document,
        "content_sha256": content_sha256(canonical),
        "signature": {"alg": SIGNATURE_ALG, "kid": kid, "value": b64url(signature)},
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
    """A file that is not a statement export."""


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
        line["dispute_id"] = row["dispute_id"]
    return line


def parse_csv_export(data: bytes) -> dict[str, Any]:
    """Rebuild the signed document from a CSV export; :class:`ExportError` if malformed."""
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ExportError(f"not a CSV statement export: {exc}") from None
    if not rows or tuple(rows[0]) != CSV_COLUMNS:
        raise ExportError(
            "not a CSV statement export: the header row is not " + ",".join(CSV_COLUMNS)
        )
    lines: list[dict[str, Any]] = []
    fields: dict[str, list[str]] = {}
    cross_brand: list[dict[str, Any]] = []
    try:
        for row in rows[1:]:
            if row and row[0].startswith("#"):
                name = row[0].removeprefix("#").strip()
                if name == "cross_brand":
                    cross_brand.append({"origin_partner_id": row[1] or None, "points": int(row[2])})
                else:
                    fields[name] = row[1:]
            elif row:
                lines.append(_line_from_row(dict(zip(CSV_COLUMNS, row, strict=True))))
        totals: dict[str, Any] = {}
        for name in TOTALS:
            raw = fields[f"totals.{name}"][0]
            totals[name] = int(raw) if name in POINT_TOTALS else raw
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
    except (KeyError, ValueError, IndexError) as exc:
        raise ExportError(
            f"not a complete CSV statement export ({type(exc).__name__}: {exc})"
        ) from None


def parse_export(data: bytes) -> dict[str, Any]:
    """A signed document from either export (JSON or CSV, told apart by the first byte)."""
    if len(data) > MAX_EXPORT_BYTES:
        raise ExportError(f"larger than {MAX_EXPORT_BYTES} bytes")
    if data.lstrip()[:1] == b"{":
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ExportError(f"not a JSON statement export: {exc}") from None
        if not isinstance(document, dict):
            raise ExportError("not a JSON statement export: not an object")
        return document
    return parse_csv_export(data)


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
