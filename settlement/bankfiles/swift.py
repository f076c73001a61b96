"""SWIFT MT940 (Customer Statement Message), read by the ``mt-940`` library.

The library reads the tags; here the file's shape is checked first (the statement's mandatory
tags present, every ``:61:`` line read back as a transaction, so none is lost silently) and
each transaction becomes a :class:`BankEntry`. The structured ``:86:`` field that German and
Dutch banks write (``?20``..``?29`` sub-fields with ``EREF+`` and ``SVWZ+``) gives the
end-to-end id and the remittance text; an unstructured ``:86:`` is the remittance text.
"""

from __future__ import annotations

import io
import itertools
import logging
import re
from datetime import date
from decimal import Decimal
from typing import Any

import mt940

from settlement.bankfiles._model import (
    BankEntry,
    BankFileInvalid,
    BankStatementFile,
    decimal_text,
    minor_amount,
    no_reference,
)

FORMAT = "mt940"
# mt940 logs each tag it cannot read at ERROR; a bad file is its sender's error, reported as a
# BankFileInvalid, not a fault of the service to alert on.
logging.getLogger("mt940").setLevel(logging.CRITICAL)
#: A tag at the start of a line: ``:20:``, ``:60F:``...
_TAG = re.compile(r"^:(\d\d[A-Z]?):", re.MULTILINE)
_MANDATORY = {"20": ":20:", "25": ":25:", "28C": ":28C:", "60": ":60F:/:60M:", "62": ":62F:/:62M:"}
#: An IBAN's shape (country, check digits, up to 30 more); the bank checked its digits.
_IBAN = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}")
#: SWIFT transaction type of a returned item (``:61:`` ``NRTI``/``SRTI``...).
_RETURNED_ITEM = "RTI"
#: German (DK) business transaction codes of a structured ``:86:`` that return a payment: 109
#: a returned SEPA direct debit, 159 a returned SEPA credit transfer.
_RETURN_CODES = frozenset({"109", "159"})
#: ``:86:`` lines are at most 65 characters; a full line goes on in the next without a space.
_LINE = 65


def looks_like_mt940(text: str) -> bool:
    """Whether ``text`` has the shape of an MT940 message: a SWIFT block header or a ``:20:``
    tag at its start."""
    head = text.lstrip("\ufeff \t\r\n")
    return head.startswith(("{1:", ":20:"))


def parse_mt940(text: str, sha256: str) -> BankStatementFile:
    """Read an MT940 file (one or several statements); :class:`BankFileInvalid` names what is
    wrong."""
    found = {m.group(1) for m in _TAG.finditer(text)}
    missing = [
        shown for tag, shown in _MANDATORY.items() if not any(f.startswith(tag) for f in found)
    ]
    if missing:
        raise BankFileInvalid(f"an MT940 statement lacks its mandatory tag(s) {', '.join(missing)}")
    try:
        # A handle, never the text itself: mt940 reads a str that names a file as that file.
        statements = mt940.parse_statements(io.StringIO(text), options=mt940.Options.all())
        transactions = [(s, t) for s in statements for t in s]
    except Exception as exc:  # the library raises many kinds for a file it cannot read
        raise BankFileInvalid(_unreadable(exc)) from None
    expected = sum(1 for m in _TAG.finditer(text) if m.group(1) == "61")
    if len(transactions) != expected:
        raise BankFileInvalid(
            f"{expected} :61: statement lines but {len(transactions)} could be read"
        )
    entries = tuple(
        _entry(no, statement.data, transaction.data)
        for no, (statement, transaction) in enumerate(transactions, start=1)
    )
    ids = []
    for statement in statements:
        data = statement.data
        number = "/".join(
            str(data[k]) for k in ("statement_number", "sequence_number") if data.get(k)
        )
        ids.append(f"{data.get('transaction_reference', '')}:{number}")
    return BankStatementFile(FORMAT, ",".join(ids), entries, sha256)


def _unreadable(exc: Exception) -> str:
    """What mt940 could not read: a tag's value (its ``RuntimeError`` carries the tag and the
    value), else the library's own words."""
    args = exc.args
    if isinstance(exc, RuntimeError) and len(args) == 3 and isinstance(args[2], str):
        tag = getattr(args[1], "id", "?")
        return f"unreadable MT940: the :{tag}: field {args[2][:80]!r} does not have its format"
    return f"unreadable MT940: {type(exc).__name__}: {str(exc)[:200]}"


def _entry(no: int, statement: dict[str, Any], data: dict[str, Any]) -> BankEntry:
    amount = data.get("amount")
    currency = getattr(amount, "currency", None) or data.get("currency")
    value = getattr(amount, "amount", None)
    if not isinstance(value, Decimal) or not isinstance(currency, str):
        raise BankFileInvalid("the :61: line has no amount or currency", entry=no)
    minor = minor_amount(decimal_text(abs(value)), currency, entry=no)
    status = str(data.get("status", "")).upper()
    # C and D are credit and debit; RC reverses a credit (money out), RD a debit (money in).
    if status not in {"C", "D", "RC", "RD"}:
        raise BankFileInvalid(f"unknown debit/credit mark {status!r} on the :61: line", entry=no)
    booked = data.get("entry_date") or data.get("date")
    if not isinstance(booked, date):
        raise BankFileInvalid("the :61: line has no booking date", entry=no)
    kind = str(data.get("id") or "")
    return BankEntry(
        line=no,
        account_iban=_iban(statement.get("account_identification")),
        amount_minor=minor,
        currency=currency,
        credit=status in {"C", "RD"},
        booking_date=date(booked.year, booked.month, booked.day),
        end_to_end_id=no_reference(data.get("end_to_end_reference")),
        bank_reference=no_reference(data.get("bank_reference")),
        remittance=_remittance(data),
        reversal=status in {"RC", "RD"}
        or kind[1:] == _RETURNED_ITEM
        or data.get("transaction_code") in _RETURN_CODES,
        return_reason=None,
    )


def _iban(account: object) -> str | None:
    """The IBAN in ``:25:`` (``DE89...``, ``COBADEFFXXX/DE89...``, ``NL91... EUR``), ``None``
    for an account number of another kind (``37040044/532013000``)."""
    if not isinstance(account, str):
        return None
    tokens = account.replace("/", " ").split()
    return next((t for t in tokens if _IBAN.fullmatch(t)), None)


def _remittance(data: dict[str, Any]) -> str:
    purpose = data.get("purpose")
    if isinstance(purpose, str) and "transaction_details" not in data:
        return " ".join(purpose.split())
    details = data.get("transaction_details")
    if not isinstance(details, str):
        return ""
    lines = details.splitlines()
    text = lines[0] if lines else ""
    for before, line in itertools.pairwise(lines):
        text += line if len(before) >= _LINE else " " + line
    return " ".join(text.split())
