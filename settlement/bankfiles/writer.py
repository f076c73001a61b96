"""camt.053.001.08 written the way a bank sends it: the demo and the tests play the bank.

The document's data is built here and ``xmlschema`` encodes it against the official schema, so
nothing invalid can be written; :func:`parse_bank_statement` reads back the same entries.
"""

from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

import xmlschema

from coalition.errors import InvariantViolated
from coalition.money import format_amount
from settlement.bankfiles._model import BankEntry, BankFileInvalid
from settlement.bankfiles.camt import BOOKED, ISO20022_NAMESPACE, REASON_LIMIT, schema

#: The version :func:`write_camt053` writes.
WRITTEN_VERSION = "camt.053.001.08"


def write_camt053(
    *,
    statement_id: str,
    account_iban: str,
    entries: Sequence[BankEntry],
    created_at: datetime,
) -> bytes:
    """A camt.053.001.08 document with one statement of ``entries``, the way a bank sends it
    (group header, account, opening and closing booked balances, one booked ``Ntry`` with one
    ``TxDtls`` per entry), valid against the official schema. The entries' ``line`` is not
    written (it is their order); their currency is the account's (that of the first entry).

    Used to play the bank: the demo and the tests write the statement a bank would return.
    """
    if not entries:
        raise BankFileInvalid("a statement to write needs at least one entry")
    currency = entries[0].currency
    if any(e.currency != currency for e in entries):
        raise BankFileInvalid("the entries of one statement share the account's currency")
    stamp = created_at.isoformat(timespec="seconds")
    first_day = min(e.booking_date for e in entries)
    last_day = max(e.booking_date for e in entries)
    net = sum(e.amount_minor if e.credit else -e.amount_minor for e in entries)
    statement: dict[str, Any] = {
        "Id": statement_id,
        "ElctrncSeqNb": "1",
        "CreDtTm": stamp,
        "Acct": {"Id": {"IBAN": account_iban}, "Ccy": currency},
        "Bal": [
            _balance("OPBD", 0, currency, first_day),
            _balance("CLBD", net, currency, last_day),
        ],
        "Ntry": [_written_entry(e) for e in entries],
    }
    document = {
        "BkToCstmrStmt": {
            "GrpHdr": {"MsgId": statement_id[:35], "CreDtTm": stamp},
            "Stmt": [statement],
        }
    }
    namespace = ISO20022_NAMESPACE + WRITTEN_VERSION
    try:
        element = schema(WRITTEN_VERSION).encode(
            document, path="Document", namespaces={"": namespace}, validation="strict"
        )
    except xmlschema.XMLSchemaValidationError as exc:
        reason = " ".join(str(exc.reason or exc.message).split())[:REASON_LIMIT]
        raise BankFileInvalid(
            f"the statement cannot be written as {WRITTEN_VERSION}: {reason}"
        ) from None
    if not isinstance(element, ET.Element):
        raise InvariantViolated("a strict encode returns the document element")
    ET.register_namespace("", namespace)
    body: bytes = ET.tostring(element, encoding="utf-8", xml_declaration=True)
    return body


def _balance(code: str, net_minor: int, currency: str, day: date) -> dict[str, Any]:
    return {
        "Tp": {"CdOrPrtry": {"Cd": code}},
        "Amt": {"$": format_amount(abs(net_minor), currency), "@Ccy": currency},
        "CdtDbtInd": "CRDT" if net_minor >= 0 else "DBIT",
        "Dt": {"Dt": day.isoformat()},
    }


def _written_entry(entry: BankEntry) -> dict[str, Any]:
    amount = {"$": format_amount(entry.amount_minor, entry.currency), "@Ccy": entry.currency}
    indicator = "CRDT" if entry.credit else "DBIT"
    family = ("RCDT" if entry.credit else "ICDT", "RRTN" if entry.reversal else "ESCT")
    ntry: dict[str, Any] = {"Amt": amount, "CdtDbtInd": indicator}
    if entry.reversal:
        ntry["RvslInd"] = True
    ntry |= {
        "Sts": {"Cd": BOOKED},
        "BookgDt": {"Dt": entry.booking_date.isoformat()},
        "ValDt": {"Dt": entry.booking_date.isoformat()},
    }
    if entry.bank_reference:
        ntry["AcctSvcrRef"] = entry.bank_reference
    ntry["BkTxCd"] = {"Domn": {"Cd": "PMNT", "Fmly": {"Cd": family[0], "SubFmlyCd": family[1]}}}
    tx: dict[str, Any] = {
        "Refs": {"EndToEndId": entry.end_to_end_id or "NOTPROVIDED"},
        "Amt": amount,
        "CdtDbtInd": indicator,
    }
    if entry.remittance:
        # Ustrd lines hold 140 characters; the reader joins them with a space again.
        tx["RmtInf"] = {"Ustrd": textwrap.wrap(entry.remittance, 140, break_on_hyphens=False)}
    if entry.return_reason:
        tx["RtrInf"] = {"Rsn": {"Cd": entry.return_reason}}
    ntry["NtryDtls"] = [{"TxDtls": [tx]}]
    return ntry
