"""ISO 20022 camt.053 (Bank-to-Customer Statement), versions 001.02 to 001.08, read.

A document is parsed by ``defusedxml`` (no DTD, no entities, no external references: an XML
bomb is refused before anything is expanded), validated against the official ISO 20022 schema
of its version (shipped in ``schemas/``) and decoded by that schema with ``xmlschema``. The
entries are then read from the decoded document, whose shape the schema guarantees. Writing
goes the same way back: ``write_camt053`` builds the document's data and ``xmlschema`` encodes
it against the camt.053.001.08 schema, which refuses anything invalid (``writer.py``).
"""

from __future__ import annotations

import functools
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET
import xmlschema
from defusedxml import DefusedXmlException

from coalition.money import format_amount
from settlement.bankfiles._model import (
    BankEntry,
    BankFileInvalid,
    BankStatementFile,
    minor_amount,
    no_reference,
)

ISO20022_NAMESPACE = "urn:iso:std:iso:20022:tech:xsd:"
#: The camt.053 versions read, each validated against its own official schema.
CAMT053_VERSIONS = tuple(f"camt.053.001.{n:02d}" for n in range(2, 9))
_SCHEMAS = Path(__file__).parent / "schemas"
#: Bank transaction sub-family codes (ISO 20022 external code set) that return or reverse an
#: earlier payment: reversal due to a payment return, to a cancellation request, an unpaid or
#: reversed direct debit.
RETURN_SUBFAMILIES = frozenset({"RRTN", "RPCR", "UPDD", "PRDD", "PRCT"})
#: Entry statuses that are booked money; pending or information-only entries are left out.
BOOKED = "BOOK"
REASON_LIMIT = 300
#: A camt.053 statement's elements nest about 15 deep; supplementary data may add a few.
MAX_XML_DEPTH = 64
#: The day of an ISO date or date-time: four-digit year, month, day, then the end or more.
_DAY = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})(?:$|[TZ+-])")


@functools.cache
def schema(version: str) -> xmlschema.XMLSchema:
    """The official ISO 20022 schema of a camt.053 ``version``, loaded once from the package
    (never from the network)."""
    return xmlschema.XMLSchema(_SCHEMAS / f"{version}.xsd", allow="local")


def parse_camt053(data: bytes, sha256: str) -> BankStatementFile:
    """Read a camt.053 document; :class:`BankFileInvalid` names what is wrong."""
    root = _safe_root(data)
    version = _version_of(root)
    _check_depth(root)
    decoded = _decode(root, version)
    document = _mapping(decoded, "BkToCstmrStmt")
    statements = _list(document.get("Stmt"))
    entries: list[BankEntry] = []
    ntry_no = 0
    for statement in statements:
        iban = _text(_mapping(_mapping(statement, "Acct"), "Id").get("IBAN"))
        for ntry in _list(statement.get("Ntry")):
            ntry_no += 1
            if _status(ntry) != BOOKED:
                continue
            for made in _entries_of(ntry, ntry_no, iban):
                entries.append(replace(made, line=len(entries) + 1))
    statement_id = ",".join(str(s.get("Id")) for s in statements)
    return BankStatementFile(version, statement_id, tuple(entries), sha256)


# --- reading -----------------------------------------------------------------------------


def _safe_root(data: bytes) -> ET.Element:
    try:
        return SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise BankFileInvalid(
            "XML with a DTD (<!DOCTYPE>), entities or external references is refused: a bank "
            f"statement needs none, and they are how XML bombs work ({type(exc).__name__})"
        ) from None
    except ET.ParseError as exc:
        raise BankFileInvalid(f"malformed XML: {exc}") from None
    except (ValueError, LookupError) as exc:
        raise BankFileInvalid(f"unreadable XML: {exc}") from None


def _check_depth(root: ET.Element) -> None:
    """Refuse XML nested deeper than any statement is (the schema lets supplementary data hold
    any XML, which the recursive schema validation must not be made to follow without end)."""
    stack = [(root, 1)]
    while stack:
        element, depth = stack.pop()
        if depth > MAX_XML_DEPTH:
            raise BankFileInvalid(f"the XML is nested deeper than {MAX_XML_DEPTH} levels")
        stack.extend((child, depth + 1) for child in element)


def _version_of(root: ET.Element) -> str:
    tag = root.tag
    namespace, _, local = tag[1:].partition("}") if tag.startswith("{") else ("", "", tag)
    if not namespace.startswith(ISO20022_NAMESPACE) or local != "Document":
        raise BankFileInvalid(
            f"not an ISO 20022 camt.053 bank statement: the root element is {tag[:120]!r}"
        )
    message = namespace.removeprefix(ISO20022_NAMESPACE)[:40]
    if message in CAMT053_VERSIONS:
        return message
    if message.startswith("camt.053."):
        raise BankFileInvalid(
            f"{message} is not a supported camt.053 version (001.02 to 001.08 are read)"
        )
    raise BankFileInvalid(
        f"a {message} document is not a bank account statement (camt.053 or MT940 expected)"
    )


def _decode(root: ET.Element, version: str) -> Mapping[str, Any]:
    try:
        decoded = schema(version).to_dict(
            root, validation="strict", decimal_type=str, strip_namespaces=True
        )
    except xmlschema.XMLSchemaValidationError as exc:
        reason = " ".join(str(exc.reason or exc.message).split())[:REASON_LIMIT]
        where = f" at {re.sub(r'{[^}]*}', '', exc.path)}" if exc.path else ""
        raise BankFileInvalid(
            f"the document is not valid against the {version} schema{where}: {reason}"
        ) from None
    except (xmlschema.XMLSchemaException, ValueError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:REASON_LIMIT]
        raise BankFileInvalid(f"the {version} document cannot be read: {reason}") from None
    if not isinstance(decoded, Mapping):
        raise BankFileInvalid(f"the {version} document is empty")
    return decoded


def _status(ntry: Mapping[str, Any]) -> str | None:
    status = ntry.get("Sts")
    # 001.02 to 001.06 write the code itself; 001.07 on a choice of a code or a proprietary one.
    if isinstance(status, Mapping):
        return _text(status.get("Cd")) or _text(status.get("Prtry"))
    return _text(status)


def _entries_of(ntry: Mapping[str, Any], ntry_no: int, iban: str | None) -> Iterator[BankEntry]:
    """The entries of one ``Ntry``: one, or one per ``TxDtls`` of a batch whose transactions
    each carry their amount."""
    amount = _mapping(ntry, "Amt")
    currency = str(amount.get("@Ccy"))
    minor = minor_amount(str(amount.get("$")), currency, entry=ntry_no)
    credit = ntry.get("CdtDbtInd") == "CRDT"
    booked = _booking_date(ntry, ntry_no)
    ntry_ref = _text(ntry.get("AcctSvcrRef"))
    ntry_return = ntry.get("RvslInd") is True or _subfamily(ntry) in RETURN_SUBFAMILIES
    txs = [tx for details in _list(ntry.get("NtryDtls")) for tx in _list(details.get("TxDtls"))]
    split = _split_amounts(txs, currency, credit, minor, ntry_no)
    if split is None:
        yield BankEntry(
            line=ntry_no,
            account_iban=iban,
            amount_minor=minor,
            currency=currency,
            credit=credit,
            booking_date=booked,
            end_to_end_id=_end_to_end(txs[0]) if len(txs) == 1 else None,
            bank_reference=(_tx_ref(txs[0]) if len(txs) == 1 else None) or ntry_ref,
            remittance=_remittance(txs, ntry),
            reversal=ntry_return or any(_is_return(tx) for tx in txs),
            return_reason=next((r for r in map(_return_reason, txs) if r), None),
        )
        return
    for tx, (tx_minor, tx_credit) in zip(txs, split, strict=True):
        yield BankEntry(
            line=ntry_no,
            account_iban=iban,
            amount_minor=tx_minor,
            currency=currency,
            credit=tx_credit,
            booking_date=booked,
            end_to_end_id=_end_to_end(tx),
            bank_reference=_tx_ref(tx) or ntry_ref,
            remittance=_remittance([tx], ntry),
            reversal=ntry_return or _is_return(tx),
            return_reason=_return_reason(tx),
        )


def _split_amounts(
    txs: list[Mapping[str, Any]], currency: str, credit: bool, minor: int, ntry_no: int
) -> list[tuple[int, bool]] | None:
    """The amount and direction of each transaction of a batched entry, or ``None`` when the
    entry stays whole: fewer than two transactions, or one without its own amount in the
    account's currency. A batch whose transactions do not add up to the entry is refused."""
    if len(txs) < 2:
        return None
    split: list[tuple[int, bool]] = []
    for tx in txs:
        amount = _tx_amount(tx)
        if amount is None or amount.get("@Ccy") != currency:
            return None
        indicator = tx.get("CdtDbtInd")
        tx_credit = credit if indicator is None else indicator == "CRDT"
        split.append((minor_amount(str(amount.get("$")), currency, entry=ntry_no), tx_credit))
    net = sum(m if c == credit else -m for m, c in split)
    if net != minor:
        raise BankFileInvalid(
            f"the {len(txs)} transactions of the batched entry add up to "
            f"{format_amount(net, currency)} {currency}, the entry books "
            f"{format_amount(minor, currency)} {currency}",
            entry=ntry_no,
        )
    return split


def _tx_amount(tx: Mapping[str, Any]) -> Mapping[str, Any] | None:
    # 001.04 on: TxDtls/Amt, in the account's currency; every version: AmtDtls/TxAmt/Amt.
    direct = tx.get("Amt")
    if isinstance(direct, Mapping):
        return direct
    booked = _mapping(_mapping(tx, "AmtDtls"), "TxAmt").get("Amt")
    return booked if isinstance(booked, Mapping) else None


def _booking_date(ntry: Mapping[str, Any], ntry_no: int) -> date:
    for key in ("BookgDt", "ValDt"):
        when = _mapping(ntry, key)
        # A date (xs:date may carry a time zone) or a date and time: the day as the bank wrote it.
        if text := _text(when.get("Dt")) or _text(when.get("DtTm")):
            day = _DAY.match(text)
            try:
                return date.fromisoformat(day.group(1)) if day else date.fromisoformat(text)
            except ValueError:
                raise BankFileInvalid(f"{key} {text!r} is not a date", entry=ntry_no) from None
    raise BankFileInvalid("the entry has no booking date (BookgDt)", entry=ntry_no)


def _subfamily(item: Mapping[str, Any]) -> str | None:
    return _text(_mapping(_mapping(_mapping(item, "BkTxCd"), "Domn"), "Fmly").get("SubFmlyCd"))


def _end_to_end(tx: Mapping[str, Any]) -> str | None:
    return no_reference(_text(_mapping(tx, "Refs").get("EndToEndId")))


def _tx_ref(tx: Mapping[str, Any]) -> str | None:
    return _text(_mapping(tx, "Refs").get("AcctSvcrRef"))


def _is_return(tx: Mapping[str, Any]) -> bool:
    return "RtrInf" in tx or _subfamily(tx) in RETURN_SUBFAMILIES


def _return_reason(tx: Mapping[str, Any]) -> str | None:
    reason = _mapping(_mapping(tx, "RtrInf"), "Rsn")
    return _text(reason.get("Cd")) or _text(reason.get("Prtry"))


def _remittance(txs: Sequence[Mapping[str, Any]], ntry: Mapping[str, Any]) -> str:
    """The unstructured remittance lines (``Ustrd``), then structured creditor references
    (``Strd/CdtrRefInf/Ref``), joined with spaces; when the transactions carry neither, their
    additional information, else the entry's (``AddtlTxInf``, ``AddtlNtryInf``)."""
    parts: list[str] = []
    for tx in txs:
        info = _mapping(tx, "RmtInf")
        parts.extend(_texts(info.get("Ustrd")))
        for structured in _list(info.get("Strd")):
            if ref := _text(_mapping(structured, "CdtrRefInf").get("Ref")):
                parts.append(ref)
    if not parts:
        parts.extend(t for t in (_text(tx.get("AddtlTxInf")) for tx in txs) if t)
    if not parts and (extra := _text(ntry.get("AddtlNtryInf"))):
        parts.append(extra)
    return " ".join(" ".join(parts).split())


def _mapping(item: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = item.get(key)
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Mapping[str, Any]]:
    items = value if isinstance(value, list) else [value]
    return [i for i in items if isinstance(i, Mapping)]


def _texts(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [t for t in map(_text, items) if t]


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    return None
