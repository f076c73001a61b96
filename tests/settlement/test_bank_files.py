"""Bank statement files: camt.053 (001.02 to 001.08) and MT940 read into the entries
reconciliation matches, bad files refused with a clear error, camt.053 written the way a bank
sends it. The samples in bank_files/ are written from the standard (each says what it holds)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import xmlschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coalition.errors import ValidationFailed
from settlement.bankfiles import (
    MAX_BANK_FILE_BYTES,
    BankEntry,
    BankFileInvalid,
    BankStatementFile,
    parse_bank_statement,
    write_camt053,
)
from settlement.bankfiles.camt import schema

FILES = Path(__file__).parent / "bank_files"
OPERATOR_IBAN = "DE89370400440532013000"
NS = "urn:iso:std:iso:20022:tech:xsd:"


def read(name: str) -> BankStatementFile:
    return parse_bank_statement((FILES / name).read_bytes())


def refusal(data: bytes) -> BankFileInvalid:
    with pytest.raises(BankFileInvalid) as caught:
        parse_bank_statement(data)
    return caught.value


def entry(line: int, amount_minor: int, credit: bool, **fields: object) -> BankEntry:
    values: dict[str, object] = {
        "account_iban": OPERATOR_IBAN,
        "currency": "EUR",
        "booking_date": date(2026, 12, 7),
        "end_to_end_id": None,
        "bank_reference": None,
        "remittance": "",
        "reversal": False,
        "return_reason": None,
    }
    values.update(fields)
    return BankEntry(line=line, amount_minor=amount_minor, credit=credit, **values)  # type: ignore[arg-type]


SAME_DAY = (
    entry(
        1,
        123456,
        False,
        end_to_end_id="stm_01JF3Q8Z5K2M4N6P8R0T2V4W6X",
        bank_reference="COBA20261207A0001",
        remittance="Coalition settlement stm_01JF3Q8Z5K2M4N6P8R0T2V4W6X period 2026-11",
    ),
    entry(
        2,
        31000,
        True,
        end_to_end_id="stm_01JF3Q9A1B2C3D4E5F6G7H8J9K",
        bank_reference="COBA20261207A0002",
        remittance="Coalition settlement stm_01JF3Q9A1B2C3D4E5F6G7H8J9K period 2026-11",
    ),
)


# --- what the samples hold --------------------------------------------------------------


def test_a_camt053_statement_gives_each_booked_entry_with_its_references() -> None:
    parsed = read("camt053_v08_eur.xml")
    assert parsed.format == "camt.053.001.08"
    assert parsed.statement_id == "STMT-20261207-EUR-0341"
    assert parsed.entries == SAME_DAY
    assert re.fullmatch(r"[0-9a-f]{64}", parsed.sha256)


def test_an_mt940_of_the_same_day_gives_the_same_entries_as_the_camt053() -> None:
    mt940 = read("mt940_eur_same_day.sta")
    camt = read("camt053_v08_eur.xml")
    assert mt940.format == "mt940"
    assert mt940.statement_id == "STMT20261207:341/1"
    # The end-to-end id split across ?20/?21 sub-fields and the purpose across ?22-?24 are
    # read whole.
    assert mt940.entries == camt.entries == SAME_DAY
    assert mt940.sha256 != camt.sha256


def test_the_same_file_twice_has_the_same_digest() -> None:
    first, again = read("camt053_v08_eur.xml"), read("camt053_v08_eur_duplicate.xml")
    assert first == again
    assert first.sha256 == again.sha256


def test_several_statements_in_several_currencies_use_each_currencys_exponent() -> None:
    parsed = read("camt053_v08_currencies.xml")
    assert parsed.statement_id == "STMT-20261208-EUR,STMT-20261208-GBP,STMT-20261208-JPY"
    got = [(e.line, e.account_iban, e.amount_minor, e.currency, e.credit) for e in parsed.entries]
    assert got == [
        (1, OPERATOR_IBAN, 8990, "EUR", False),
        (2, "GB29NWBK60161331926819", 7520, "GBP", False),
        (3, "GB82WEST12345698765432", 125000, "JPY", False),
    ]
    assert parsed.entries[2].end_to_end_id == "stm_01JF4A2D3E4F5G6H7J8K9M0N1P"


def test_a_returned_payment_is_a_reversal_with_its_reason_and_original_reference() -> None:
    (returned,) = read("camt053_v08_return.xml").entries
    assert returned.credit and returned.reversal
    assert returned.return_reason == "AC04"
    assert returned.end_to_end_id == "stm_01JF3Q8Z5K2M4N6P8R0T2V4W6X"
    assert returned.amount_minor == 123456
    assert returned.booking_date == date(2026, 12, 9)


def test_partner_transfers_keep_the_statement_id_in_the_remittance_when_not_in_the_reference() -> (
    None
):
    partial, transfer = read("camt053_v08_partial_and_transfer.xml").entries
    assert (partial.amount_minor, partial.credit) == (10000, True)
    assert partial.end_to_end_id == "stm_01JF5B0C1D2E3F4G5H6J7K8M9N"
    assert transfer.end_to_end_id is None  # NOTPROVIDED
    assert transfer.remittance == "Invoice stm_01JF5B1D2E3F4G5H6J7K8M9N0P November"
    assert transfer.bank_reference == "COBA20261210C0002"


def test_a_batched_entry_gives_one_entry_per_transaction_and_pending_entries_none() -> None:
    parsed = read("camt053_v08_batch.xml")
    assert [
        (e.line, e.amount_minor, e.credit, e.end_to_end_id, e.bank_reference)
        for e in parsed.entries
    ] == [
        (1, 40000, False, "stm_01JF6C0D1E2F3G4H5J6K7M8N9P", "COBA20261211B0001-1"),
        (2, 60000, False, "stm_01JF6C1E2F3G4H5J6K7M8N9P0Q", "COBA20261211B0001-2"),
    ]


def test_a_batch_whose_transactions_do_not_add_up_is_refused() -> None:
    data = (FILES / "camt053_v08_batch.xml").read_bytes()
    bad = data.replace(b'<Amt Ccy="EUR">600.00</Amt>', b'<Amt Ccy="EUR">700.00</Amt>')
    error = refusal(bad)
    assert error.entry == 1
    assert "add up to 1100.00 EUR, the entry books 1000.00 EUR" in error.detail


def test_a_batch_without_transaction_amounts_stays_one_entry() -> None:
    data = (FILES / "camt053_v08_batch.xml").read_bytes()
    whole = re.sub(rb'\s*<Amt Ccy="EUR">[46]00.00</Amt>', b"", data)
    first = parse_bank_statement(whole).entries[0]
    assert (first.amount_minor, first.end_to_end_id, first.bank_reference) == (
        100000,
        None,
        "COBA20261211B0001",
    )
    assert "stm_01JF6C0D1E2F3G4H5J6K7M8N9P" in first.remittance
    assert "stm_01JF6C1E2F3G4H5J6K7M8N9P0Q" in first.remittance


def test_version_02_reads_amount_details_reversals_and_entry_information() -> None:
    parsed = read("camt053_v02_eur.xml")
    assert parsed.format == "camt.053.001.02"
    paid, transfer, reversed_ = parsed.entries
    assert (paid.amount_minor, paid.credit, paid.end_to_end_id) == (
        25000,
        False,
        "stm_01JF1A0B1C2D3E4F5G6H7J8K9M",
    )
    assert (transfer.credit, transfer.remittance) == (True, "stm_01JF1A1C2D3E4F5G6H7J8K9M0N")
    assert not transfer.reversal
    assert (reversed_.credit, reversed_.reversal, reversed_.bank_reference) == (
        False,
        True,
        "COBA20261201V0003",
    )
    assert reversed_.remittance == "Reversal of COBA20261201V0002"


@pytest.mark.parametrize("version", ["04", "06"])
def test_versions_04_and_06_read_structured_references_and_booking_times(version: str) -> None:
    parsed = read(f"camt053_v{version}_eur.xml")
    assert parsed.format == f"camt.053.001.{version}"
    paid, transfer = parsed.entries
    assert (paid.amount_minor, paid.credit) == (25000, False)
    assert paid.end_to_end_id is not None and paid.end_to_end_id.startswith("stm_")
    assert transfer.end_to_end_id is None
    assert transfer.remittance.startswith("Loyalty points November stm_")
    assert transfer.booking_date == paid.booking_date  # BookgDt/DtTm gives its date


@pytest.mark.parametrize(("sample", "version"), [("04", "03"), ("06", "05"), ("08", "07")])
def test_every_version_from_02_to_08_validates_against_its_own_schema(
    sample: str, version: str
) -> None:
    name = "camt053_v08_eur.xml" if sample == "08" else f"camt053_v{sample}_eur.xml"
    data = (
        (FILES / name)
        .read_bytes()
        .replace(f"{NS}camt.053.001.{sample}".encode(), f"{NS}camt.053.001.{version}".encode())
    )
    parsed = parse_bank_statement(data)
    assert parsed.format == f"camt.053.001.{version}"
    assert parsed.entries == read(name).entries


def test_every_sample_is_valid_against_the_official_schema_of_its_version() -> None:
    for path in FILES.glob("camt053_*.xml"):
        version = re.search(rb"camt\.053\.001\.0[2-8]", path.read_bytes())
        assert version is not None, path
        assert schema(version.group().decode()).is_valid(str(path)), path


# --- bad files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("billion_laughs.xml", "DTD (<!DOCTYPE>), entities or external references is refused"),
        ("external_entity.xml", "DTD (<!DOCTYPE>), entities or external references is refused"),
        ("malformed.xml", "malformed XML: mismatched tag: line 5"),
        ("pain001.xml", "a pain.001.001.09 document is not a bank account statement"),
        ("camt052.xml", "a camt.052.001.08 document is not a bank account statement"),
        ("camt054.xml", "a camt.054.001.08 document is not a bank account statement"),
        (
            "camt053_not_schema_valid.xml",
            "not valid against the camt.053.001.08 schema at /Document/BkToCstmrStmt",
        ),
        ("camt053_wrong_decimals.xml", "entry 2: amount 310.005 EUR: EUR amounts have at most 2"),
    ],
)
def test_a_bad_file_is_refused_with_a_clear_validation_problem(name: str, says: str) -> None:
    error = refusal((FILES / "invalid" / name).read_bytes())
    assert says in error.detail
    assert isinstance(error, ValidationFailed) and error.code == "validation"
    assert error.errors == [{"path": "", "message": error.detail}]


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        (b">310.00<", b">0.00<", "entry 2: amount 0.00 EUR: amount must be positive"),
        (b">310.00<", b">-310.00<", "not valid against the camt.053.001.08 schema"),
        (b'Ccy="EUR">310.00<', b'Ccy="JPY">310.5<', "entry 2: amount 310.5 JPY: JPY amounts"),
        (b'Ccy="EUR">310.00<', b'Ccy="XXY">310.00<', "entry 2: amount 310.00 XXY: unknown ISO"),
        (b"camt.053.001.08", b"camt.053.001.13", "camt.053.001.13 is not a supported"),
        (
            b"<BookgDt>\n          <Dt>2026-12-07</Dt>\n        </BookgDt>\n        <ValDt>\n"
            b"          <Dt>2026-12-07</Dt>\n        </ValDt>",
            b"",
            "entry 1: the entry has no booking",
        ),
    ],
)
def test_an_amount_or_field_that_breaks_a_rule_names_the_entry(
    old: bytes, new: bytes, says: str
) -> None:
    data = (FILES / "camt053_v08_eur.xml").read_bytes()
    assert old in data
    error = refusal(data.replace(old, new))
    assert says in error.detail


def test_xml_nested_without_end_in_supplementary_data_is_refused() -> None:
    data = (FILES / "camt053_v08_eur.xml").read_bytes()
    nested = b"<a>" * 100_000 + b"</a>" * 100_000
    deep = b"<SplmtryData><Envlp>" + nested + b"</Envlp></SplmtryData></BkToCstmrStmt>"
    error = refusal(data.replace(b"</BkToCstmrStmt>", deep))
    assert "nested deeper than 64 levels" in error.detail
    shallow = b"<SplmtryData><Envlp><a><b>x</b></a></Envlp></SplmtryData></BkToCstmrStmt>"
    assert parse_bank_statement(data.replace(b"</BkToCstmrStmt>", shallow)).entries == SAME_DAY


def test_a_file_over_16_mib_is_refused_before_it_is_parsed() -> None:
    sample = (FILES / "camt053_v08_eur.xml").read_bytes()
    error = refusal(sample + b" " * (MAX_BANK_FILE_BYTES - len(sample) + 1))
    assert "more than the limit of 16777216" in error.detail
    assert parse_bank_statement(sample + b" " * (MAX_BANK_FILE_BYTES - len(sample))).entries


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "the file is empty"),
        (b"%PDF-1.7 a statement as a PDF", "neither a camt.053 XML document nor an MT940"),
        (
            b":20:REF\r\n:25:DE89370400440532013000\r\n:61:2612071207D1,00NTRF//X\r\n",
            "lacks its mandatory tag(s) :28C:, :60F:/:60M:, :62F:/:62M:",
        ),
        (
            b":20:R\n:25:A\n:28C:1\n:60F:C261206EUR1,00\n:61:garbage\n:62F:C261207EUR1,00\n",
            "the :61: field 'garbage' does not have its format",
        ),
        (
            b":20:R\n:25:A\n:28C:1\n:60F:C261206EUR1,00\n:61:2612071207D1,005NTRF//X\n"
            b":62F:C261207EUR1,00\n",
            "entry 1: amount 1.005 EUR: EUR amounts have at most 2",
        ),
        (
            b":20:R\n:25:A\n:28C:1\n:60F:C261206EUR1,00\n:61:2612071207D0,00NTRF//X\n"
            b":62F:C261207EUR1,00\n",
            "entry 1: amount 0.00 EUR: amount must be positive",
        ),
    ],
)
def test_a_bad_mt940_or_unknown_file_is_refused(data: bytes, says: str) -> None:
    assert says in refusal(data).detail


def test_an_mt940_file_of_several_statements_gives_each_its_account() -> None:
    one = (FILES / "mt940_eur_same_day.sta").read_text(encoding="utf-8")
    two = (
        one.replace("STMT20261207", "STMT20261207B")
        .replace(":25:DE89370400440532013000", ":25:NL91ABNA0417164300")
        .replace("341/1", "12/1")
    )
    parsed = parse_bank_statement((one + two).encode())
    assert parsed.statement_id == "STMT20261207:341/1,STMT20261207B:12/1"
    assert [(e.line, e.account_iban) for e in parsed.entries] == [
        (1, OPERATOR_IBAN),
        (2, OPERATOR_IBAN),
        (3, "NL91ABNA0417164300"),
        (4, "NL91ABNA0417164300"),
    ]


@pytest.mark.parametrize(
    ("account", "iban"),
    [
        ("DE89370400440532013000", OPERATOR_IBAN),
        ("COBADEFFXXX/DE89370400440532013000", OPERATOR_IBAN),
        ("NL91ABNA0417164300 EUR", "NL91ABNA0417164300"),
        ("37040044/532013000", None),
    ],
)
def test_mt940_account_is_the_iban_in_field_25(account: str, iban: str | None) -> None:
    data = (FILES / "mt940_eur_same_day.sta").read_text(encoding="utf-8")
    data = data.replace(":25:DE89370400440532013000", f":25:{account}")
    assert {e.account_iban for e in parse_bank_statement(data.encode()).entries} == {iban}


def test_an_mt940_returned_transfer_code_is_a_reversal() -> None:
    data = (FILES / "mt940_eur_same_day.sta").read_bytes()
    returned = data.replace(b":86:171?00SEPA-LASTSCHRIFT", b":86:159?00SEPA-UEBERW. RETOURE")
    first, second = parse_bank_statement(returned).entries
    assert (first.reversal, second.reversal) == (False, True)


def test_mt940_return_marks_are_reversals_in_the_right_direction() -> None:
    data = (
        b":20:R\n:25:NL91ABNA0417164300\n:28C:7/1\n:60F:C261206EUR100,00\n"
        b":61:2612071207RC5,00NRTINONREF//B1\n:86:Return AC04\n"
        b":61:2612071207RD6,00NTRFNONREF//B2\n:86:Direct debit reversed\n"
        b":62F:C261207EUR101,00\n"
    )
    rc, rd = parse_bank_statement(data).entries
    assert (rc.credit, rc.reversal, rc.amount_minor, rc.bank_reference) == (False, True, 500, "B1")
    assert (rd.credit, rd.reversal, rd.amount_minor) == (True, True, 600)
    assert rc.account_iban == "NL91ABNA0417164300"
    assert parse_bank_statement(data).statement_id == "R:7/1"


# --- writing ----------------------------------------------------------------------------


def test_a_written_statement_is_valid_camt053_001_08_and_reads_back() -> None:
    entries = (
        *SAME_DAY,
        entry(3, 5000, True, reversal=True, return_reason="AC04", bank_reference="R1"),
    )
    data = write_camt053(
        statement_id="STMT-DEMO-1",
        account_iban=OPERATOR_IBAN,
        entries=entries,
        created_at=datetime(2026, 12, 7, 22, 0, tzinfo=UTC),
    )
    assert schema("camt.053.001.08").is_valid(data.decode())
    parsed = parse_bank_statement(data)
    assert (parsed.format, parsed.statement_id, parsed.entries) == (
        "camt.053.001.08",
        "STMT-DEMO-1",
        entries,
    )


reference = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=35)
words = st.lists(
    st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=30), max_size=12
).map(" ".join)


@st.composite
def bank_entries(draw: st.DrawFn) -> list[BankEntry]:
    currency = draw(st.sampled_from(["EUR", "GBP", "JPY", "KWD"]))
    count = draw(st.integers(1, 5))
    return [
        BankEntry(
            line=line,
            account_iban=OPERATOR_IBAN,
            amount_minor=draw(st.integers(1, 10**9)),  # within the service limit in every currency
            currency=currency,
            credit=draw(st.booleans()),
            booking_date=draw(st.dates(date(2000, 1, 1), date(2099, 12, 31))),
            end_to_end_id=draw(st.none() | reference.filter(lambda r: r != "NOTPROVIDED")),
            bank_reference=draw(st.none() | reference),
            remittance=draw(words),
            reversal=(returned := draw(st.booleans())),
            return_reason=draw(st.sampled_from(["AC04", "MS03"])) if returned else None,
        )
        for line in range(1, count + 1)
    ]


@settings(max_examples=40, deadline=None)
@given(entries=bank_entries())
def test_parse_reads_back_what_write_camt053_wrote(entries: list[BankEntry]) -> None:
    data = write_camt053(
        statement_id="S",
        account_iban=OPERATOR_IBAN,
        entries=entries,
        created_at=datetime(2026, 12, 7, tzinfo=UTC),
    )
    assert parse_bank_statement(data).entries == tuple(entries)


# --- nothing but BankFileInvalid ----------------------------------------------------------

SAMPLES = sorted(FILES.glob("*.*")) + sorted((FILES / "invalid").glob("*"))


def parse_or_refuse(data: bytes) -> None:
    try:
        parsed = parse_bank_statement(data)
    except BankFileInvalid as error:
        detail = error.detail
    else:
        detail = ""
        assert all(e.amount_minor > 0 for e in parsed.entries)
    assert detail is not None


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_raise_nothing_but_bank_file_invalid(data: bytes) -> None:
    parse_or_refuse(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sample=st.sampled_from(SAMPLES),
    edits=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 4), st.binary(max_size=8)),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_samples_raise_nothing_but_bank_file_invalid(
    sample: Path, edits: list[tuple[float, int, bytes]]
) -> None:
    data = sample.read_bytes()
    for where, cut, insert in edits:
        at = int(where * len(data))
        data = data[:at] + insert + data[at + cut :]
    parse_or_refuse(data)


CAMT_SAMPLES = sorted(FILES.glob("camt053_*.xml"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sample=st.sampled_from(CAMT_SAMPLES),
    changes=st.lists(
        st.tuples(
            st.floats(0, 1, exclude_max=True),
            st.one_of(
                st.text(max_size=20),
                st.from_regex(
                    r"-?[0-9]{1,5}-[0-9]{1,2}-[0-9]{1,2}([TZ+-].{0,12})?", fullmatch=True
                ),
                st.from_regex(r"[+-]?[0-9]{0,12}(\.[0-9]{0,6})?", fullmatch=True),
                st.sampled_from(["true", "false", "1", "CRDT", "DBIT", "PDNG", "NOTPROVIDED"]),
            ),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_samples_with_changed_values_raise_nothing_but_bank_file_invalid(
    sample: Path, changes: list[tuple[float, str]]
) -> None:
    # Well-formed XML with any element's text or any attribute replaced: what reaches the
    # reading of the decoded values, past the XML parser.
    root = ET.fromstring(sample.read_bytes())
    elements = list(root.iter())
    for where, value in changes:
        element = elements[int(where * len(elements))]
        if element.attrib:
            element.set(next(iter(element.attrib)), value)
        else:
            element.text = value
    parse_or_refuse(ET.tostring(root, encoding="utf-8"))


@pytest.mark.parametrize(
    ("written", "read"),
    [
        (b"<Dt>2026-12-07+01:00</Dt>", date(2026, 12, 7)),
        (b"<Dt>2026-12-07Z</Dt>", date(2026, 12, 7)),
        (b"<DtTm>2026-12-07T23:59:59.1234567-05:00</DtTm>", date(2026, 12, 7)),
        (b"<Dt>12026-12-07</Dt>", "BookgDt '12026-12-07' is not a date"),
    ],
)
def test_booking_dates_are_the_day_the_bank_wrote(written: bytes, read: date | str) -> None:
    data = (FILES / "camt053_v08_eur.xml").read_bytes()
    data = data.replace(b"<Dt>2026-12-07</Dt>\n        </BookgDt>", written + b"</BookgDt>", 1)
    if isinstance(read, str):
        assert read in refusal(data).detail
    else:
        assert parse_bank_statement(data).entries[0].booking_date == read


def test_xml_in_utf16_is_read() -> None:
    data = (FILES / "camt053_v08_eur.xml").read_text(encoding="utf-8")
    utf16 = data.replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16")
    assert parse_bank_statement(utf16).entries == SAME_DAY


@settings(max_examples=60, deadline=None)
@given(text=st.text(st.sampled_from(list(":0123456789CDRNTFX/,?+EURabc \n{}-")), max_size=400))
def test_mt940_shaped_text_raises_nothing_but_bank_file_invalid(text: str) -> None:
    parse_or_refuse((":20:R\n:25:A\n:28C:1\n:60F:C261206EUR1,00\n" + text).encode())


def test_schemas_are_loaded_from_the_package_not_the_network() -> None:
    loaded = schema("camt.053.001.02")
    assert isinstance(loaded, xmlschema.XMLSchema)
    assert loaded.url is not None and loaded.url.startswith("file://")
