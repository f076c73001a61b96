"""``coalition statements verify`` accepts exactly what the service exported and nothing else:
a file that a reader could see differently from what was signed (a row or a key twice, a row
or a field the export does not have, another encoding, other line ends or whitespace) is
refused, whatever its hash says; a genuine export, JSON or CSV, always verifies; a UTF-8 byte
order mark (what a spreadsheet adds) is the one thing set aside, and the verifier says so."""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cli.main import main
from settlement.canonical import (
    UTF8_BOM,
    ExportError,
    canonical_json,
    csv_export,
    json_export,
    parse_keys,
    read_export,
    signed_document,
    verify_document,
)
from tests.conftest import Db
from tests.settlement.helpers import export_files


def _verify(path: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["statements", "verify", str(path), "--keys", str(keys)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _rows(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_a_csv_row_given_again_before_the_real_one_is_refused(
    lite: Db, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, as_csv, keys = export_files(lite, tmp_path)
    rows = _rows(as_csv)
    at = next(n for n, row in enumerate(rows) if row.startswith("# totals.net_amount,"))
    forged = [*rows[:at], "# totals.net_amount,999999.000\n", *rows[at:]]
    as_csv.write_text("".join(forged), encoding="utf-8")
    code, _, err = _verify(as_csv, keys, capsys)
    assert code == 1 and f"line {at + 2}: the row '# totals.net_amount' appears a second" in err
    as_csv.write_text("".join([*rows[: at + 1], rows[at], *rows[at + 1 :]]), encoding="utf-8")
    code, _, err = _verify(as_csv, keys, capsys)
    assert code == 1 and "'# totals.net_amount' appears a second time" in err


def test_a_csv_row_no_export_has_is_refused(
    lite: Db, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, as_csv, keys = export_files(lite, tmp_path)
    rows = _rows(as_csv)
    iban = "# payee_iban,DE89370400440532013000\n"
    for at in (len(rows) - 1, len(rows)):
        as_csv.write_text("".join([*rows[:at], iban, *rows[at:]]), encoding="utf-8")
        code, _, err = _verify(as_csv, keys, capsys)
        assert code == 1 and f"line {at + 1}:" in err, err
    as_csv.write_text("".join(rows).replace("\n", ",\n", 1), encoding="utf-8")
    code, _, err = _verify(as_csv, keys, capsys)
    assert code == 1 and "the header row is not" in err


def test_a_json_key_given_twice_is_refused(
    lite: Db, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    as_json, _, keys = export_files(lite, tmp_path)
    text = as_json.read_text(encoding="utf-8")
    as_json.write_text(
        text.replace('"totals":{', '"totals":{"net_amount":"999999.000",'), encoding="utf-8"
    )
    code, _, err = _verify(as_json, keys, capsys)
    assert code == 1 and "the key 'net_amount' appears twice in one object" in err


def test_a_field_beside_the_signature_which_no_hash_covers_is_refused(
    lite: Db, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    as_json, _, keys = export_files(lite, tmp_path)
    document = json.loads(as_json.read_bytes())
    document["signature"]["payee_iban"] = "DE89370400440532013000"
    as_json.write_bytes(json_export(document))
    code, _, err = _verify(as_json, keys, capsys)
    assert code == 1 and "$.signature has a field no export has: payee_iban" in err


def test_a_csv_a_spreadsheet_saved_with_a_byte_order_mark_verifies_and_says_so(
    lite: Db, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, as_csv, keys = export_files(lite, tmp_path)
    exported = as_csv.read_bytes()
    as_csv.write_bytes(UTF8_BOM + exported)
    code, out, _ = _verify(as_csv, keys, capsys)
    assert code == 0 and out.startswith("OK: statement stmt_")
    assert "note: the file starts with a UTF-8 byte order mark" in out
    as_csv.write_bytes(UTF8_BOM + exported.replace(b"\n", b"\r\n"))
    code, _, err = _verify(as_csv, keys, capsys)
    assert code == 1 and "end in CR LF, the export's in LF" in err
    as_csv.write_bytes(exported.decode().encode("utf-16"))
    code, _, err = _verify(as_csv, keys, capsys)
    assert code == 1 and "the file is UTF-16" in err


# --- the property: mutations of genuine exports -----------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_KEY = Ed25519PrivateKey.generate()
_KID = "sk_test"
_KEYS = {_KID: _KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)}


def _id(prefix: str) -> st.SearchStrategy[str]:
    return st.text(_CROCKFORD, min_size=26, max_size=26).map(lambda s: f"{prefix}_{s}")


_TIMES = st.builds(
    lambda d, h, us: f"2026-{d // 28 + 1:02d}-{d % 28 + 1:02d}T{h:02d}:00:00{us}Z",
    st.integers(0, 300),
    st.integers(0, 23),
    st.sampled_from(["", ".5", ".000001", ".123456"]),
)
_AMOUNTS = st.builds(
    lambda n, places: (
        f"{'-' if n < 0 else ''}{abs(n) // 10**places}"
        + (f".{abs(n) % 10**places:0{places}d}" if places else "")
    ),
    st.integers(-(10**15), 10**15),
    st.sampled_from([0, 2, 3]),
)


@st.composite
def _lines(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(
            ["earn", "earn_reversal", "burn", "burn_reversal", "bonus"] * 2 + ["adjustment"]
        )
    )
    line: dict[str, Any] = {
        "transaction_id": None if kind == "adjustment" else draw(_id("txn")),
        "kind": kind,
        "posted_at": draw(_TIMES),
        "occurred_at": draw(_TIMES),
        "points": draw(st.integers(-(10**12), 10**12)),
        "unit_price": None
        if kind == "adjustment"
        else draw(st.sampled_from(["0.0035", "1.6", "0.00425"])),
        "amount": draw(_AMOUNTS),
        "prior_period": draw(st.booleans()),
    }
    if kind == "adjustment":
        line["dispute_id"] = draw(_id("dsp"))
    return line


@st.composite
def _documents(draw: st.DrawFn) -> dict[str, Any]:
    document = {
        "id": draw(_id("stmt")),
        "partner_id": draw(_id("prt")),
        "period": {"id": draw(_id("per")), "start": draw(_TIMES), "end": draw(_TIMES)},
        "currency": draw(st.sampled_from(["EUR", "JPY", "BHD"])),
        "status": draw(st.sampled_from(["issued", "acknowledged", "disputed", "settled"])),
        "lines": draw(st.lists(_lines(), max_size=6)),
        "totals": {
            "issued_points": draw(st.integers(0, 10**15)),
            "issued_amount": draw(_AMOUNTS),
            "earn_reversed_amount": draw(_AMOUNTS),
            "redeemed_points": draw(st.integers(0, 10**15)),
            "reimbursed_amount": draw(_AMOUNTS),
            "burn_reversed_amount": draw(_AMOUNTS),
            "adjustments_amount": draw(_AMOUNTS),
            "net_amount": draw(_AMOUNTS),
            "direction": draw(st.sampled_from(["partner_pays", "coalition_pays", "none"])),
        },
        "cross_brand": draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "origin_partner_id": st.none() | _id("prt"),
                        "points": st.integers(-(10**12), 10**12),
                    }
                ),
                max_size=3,
            )
        ),
    }
    return signed_document(document, _KID, _KEY.sign(canonical_json(document)))


def _accepted(data: bytes, keys: dict[str, bytes]) -> bool:
    try:
        export = read_export(data)
    except ExportError:
        return False
    return verify_document(export.document, keys).ok


#: Rows a forger might add: another value for a field, a field no export has, a line.
_FORGED_ROWS = st.sampled_from(
    [
        "# totals.net_amount,999999.000",
        "# id,stmt_01FORGED",
        "# payee_iban,DE89370400440532013000",
        "# cross_brand,,5",
        "# signature,ed25519,sk_test,AAAA",
        "#totals.net_amount,1",
        "txn_01FORGED,earn,2026-01-05T09:00:00Z,2026-01-05T09:00:00Z,5,1.6,8.0,false,",
        ",adjustment,2026-01-05T09:00:00Z,2026-01-05T09:00:00Z,0,,-5.00,false,dsp_1",
        "",
    ]
) | st.text(max_size=40).filter(lambda t: "\n" not in t and "\r" not in t)
#: Keys a forger might add in front of an object of the JSON export (a repeat or a new one).
_FORGED_KEYS = st.sampled_from(
    ["net_amount", "id", "kid", "value", "alg", "status", "points", "amount", "payee_iban"]
)


def _split(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


@st.composite
def _mutation(draw: st.DrawFn, data: bytes) -> bytes:
    """One change a forger or another program could make to an export's bytes."""
    rows = _split(data)
    kind = draw(
        st.sampled_from(
            [
                "insert row",
                "duplicate row",
                "reorder rows",
                "drop row",
                "add column",
                "re-encode",
                "line ends",
                "whitespace",
                "repeat key",
                "reformat json",
                "edit byte",
            ]
        )
    )
    at = draw(st.integers(0, len(rows)))
    if kind == "insert row":
        row = draw(_FORGED_ROWS).encode() + b"\n"
        return b"".join([*rows[:at], row, *rows[at:]])
    if kind == "duplicate row":
        row = rows[draw(st.integers(0, len(rows) - 1))]
        return b"".join([*rows[:at], row if row.endswith(b"\n") else row + b"\n", *rows[at:]])
    if kind == "reorder rows":
        i, j = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, len(rows) - 1))
        rows[i], rows[j] = rows[j], rows[i]
        return b"".join(rows)
    if kind == "drop row":
        return b"".join(rows[:at] + rows[at + 1 :])
    if kind == "add column":
        i = draw(st.integers(0, len(rows) - 1))
        cell = draw(st.sampled_from([b",", b",x", b",DE89370400440532013000", b',""']))
        rows[i] = rows[i].rstrip(b"\n") + cell + b"\n"
        return b"".join(rows)
    if kind == "re-encode":
        encoding = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"]))
        return data.decode("utf-8").encode(encoding, errors="replace")
    if kind == "line ends":
        ending = draw(st.sampled_from([b"\r\n", b"\r", b"\n\n"]))
        return data.replace(b"\n", ending)
    if kind == "whitespace":
        where = draw(st.integers(0, len(data)))
        space = draw(st.sampled_from([b" ", b"\t", b"\n", b"\r\n", b"\xc2\xa0", b"\xef\xbb\xbf"]))
        return data[:where] + space + data[where:]
    if kind == "repeat key":
        opens = [n for n, byte in enumerate(data) if byte == ord("{")] or [0]
        where = draw(st.sampled_from(opens)) + 1
        value = draw(st.sampled_from([b'"999.000"', b"5", b"null", b'"x"']))
        pair = b'"' + draw(_FORGED_KEYS).encode() + b'":' + value + b","
        return data[:where] + pair + data[where:]
    if kind == "reformat json":
        try:
            document = json.loads(data)
        except ValueError:
            return data + b" "
        style: Callable[[Any], str] = draw(
            st.sampled_from(
                [
                    lambda d: json.dumps(d, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                    lambda d: json.dumps(d, sort_keys=True) + "\n",
                    lambda d: json.dumps(d, ensure_ascii=False, separators=(",", ":")) + "\n",
                    lambda d: json.dumps(d, sort_keys=True, separators=(",", ":")),
                ]
            )
        )
        return style(document).encode()
    where = draw(st.integers(0, len(data) - 1))
    replacement = draw(st.sampled_from(b'0123456789,#"{}:aZ '))
    return data[:where] + bytes([replacement]) + data[where + 1 :]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=_documents(), data=st.data())
def test_no_mutation_of_a_genuine_export_is_accepted(
    document: dict[str, Any], data: st.DataObject
) -> None:
    for writer in (json_export, csv_export):
        genuine = writer(document)
        assert _accepted(genuine, _KEYS), genuine
        assert read_export(UTF8_BOM + genuine).notes
        assert read_export(UTF8_BOM + genuine).document == document
        mutated = data.draw(_mutation(genuine))
        assume(mutated not in (genuine, UTF8_BOM + genuine))
        assert not _accepted(mutated, _KEYS), mutated


def test_no_mutation_of_a_real_statements_exports_is_accepted(lite: Db, tmp_path: Path) -> None:
    as_json, as_csv, keys_file = export_files(lite, tmp_path)
    keys = parse_keys(keys_file.read_bytes())
    exports = [as_json.read_bytes(), as_csv.read_bytes()]
    for genuine in exports:
        assert _accepted(genuine, keys) and _accepted(UTF8_BOM + genuine, keys)

    @settings(max_examples=300, deadline=None)
    @given(which=st.sampled_from(exports), data=st.data())
    def check(which: bytes, data: st.DataObject) -> None:
        mutated = data.draw(_mutation(which))
        assume(mutated not in (which, UTF8_BOM + which))
        assert not _accepted(mutated, keys), mutated

    check()


def test_the_exports_of_a_document_hold_every_printable_character_in_its_fields() -> None:
    document = _sample()
    for value in ('a,"b"\nc', "#x", "é日\u2028", string.whitespace):
        document["status"] = value
        signed = signed_document(document, _KID, _KEY.sign(canonical_json(document)))
        for writer in (json_export, csv_export):
            assert read_export(writer(signed)).document == signed


def _sample() -> dict[str, Any]:
    return {
        "id": "stmt_1",
        "partner_id": "prt_1",
        "period": {"id": "per_1", "start": "2026-01-01T00:00:00Z", "end": "2026-02-01T00:00:00Z"},
        "currency": "EUR",
        "status": "issued",
        "lines": [],
        "totals": {
            "issued_points": 0,
            "issued_amount": "0.00",
            "earn_reversed_amount": "0.00",
            "redeemed_points": 0,
            "reimbursed_amount": "0.00",
            "burn_reversed_amount": "0.00",
            "adjustments_amount": "0.00",
            "net_amount": "0.00",
            "direction": "none",
        },
        "cross_brand": [],
    }


def test_a_signature_written_with_its_spare_bits_set_is_refused(lite: Db, tmp_path: Path) -> None:
    """An Ed25519 signature is 64 bytes, 86 base64url characters whose last one carries 4
    spare bits: a character that differs only in them decodes to the same signature, yet the
    exported bytes changed. The verifier reads one text per value (RFC 4648 3.5)."""
    as_json, _, keys_file = export_files(lite, tmp_path)
    keys = parse_keys(keys_file.read_bytes())
    genuine = as_json.read_bytes()
    value = json.loads(genuine)["signature"]["value"]
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    last = alphabet.index(value[-1])
    twin = value[:-1] + alphabet[last ^ 1]  # the lowest spare bit flipped
    assert _accepted(genuine, keys)
    assert not _accepted(genuine.replace(value.encode(), twin.encode()), keys)
