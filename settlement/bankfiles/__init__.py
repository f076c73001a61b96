"""Bank statement files in: ISO 20022 camt.053 (001.02 to 001.08) and SWIFT MT940.

:func:`parse_bank_statement` reads either into a :class:`BankStatementFile` of
:class:`BankEntry` items, the movements of money reconciliation matches to settlement
statements; :func:`write_camt053` writes a camt.053.001.08 statement the way a bank would (the
demo and the tests play the bank with it). Every bad file raises :class:`BankFileInvalid` (a
``422`` problem) naming what is wrong; nothing else escapes. docs/payments.md, "Bank statement
files", says how each field is read.
"""

from __future__ import annotations

import hashlib

from settlement.bankfiles._model import (
    MAX_BANK_FILE_BYTES,
    BankEntry,
    BankFileInvalid,
    BankStatementFile,
)
from settlement.bankfiles.camt import CAMT053_VERSIONS, parse_camt053
from settlement.bankfiles.swift import looks_like_mt940, parse_mt940
from settlement.bankfiles.writer import write_camt053

__all__ = [
    "CAMT053_VERSIONS",
    "MAX_BANK_FILE_BYTES",
    "BankEntry",
    "BankFileInvalid",
    "BankStatementFile",
    "parse_bank_statement",
    "write_camt053",
]

_BOM = b"\xef\xbb\xbf"
#: XML in UTF-16 starts with its byte-order mark (the XML parser reads it from there).
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def parse_bank_statement(data: bytes) -> BankStatementFile:
    """Read a bank statement file: a camt.053 document (recognised by its ISO 20022 namespace)
    or an MT940 message (recognised by its shape).

    A file over :data:`MAX_BANK_FILE_BYTES` (16 MiB) is refused before it is parsed; the API
    also caps the request body at that size, so a larger one is never read into memory. XML is
    parsed with no DTD, no entities and no network. Raises :class:`BankFileInvalid` for
    anything that is not a valid statement, and nothing else.
    """
    if len(data) > MAX_BANK_FILE_BYTES:
        raise BankFileInvalid(
            f"the file has {len(data)} bytes, more than the limit of {MAX_BANK_FILE_BYTES}"
        )
    sha256 = hashlib.sha256(data).hexdigest()
    head = data.removeprefix(_BOM).lstrip(b" \t\r\n")
    if head.startswith(b"<") or data.startswith(_UTF16_BOMS):
        return parse_camt053(data, sha256)
    text = _text(data)
    if looks_like_mt940(text):
        return parse_mt940(text, sha256)
    if not head:
        raise BankFileInvalid("the file is empty")
    raise BankFileInvalid("neither a camt.053 XML document nor an MT940 message")


def _text(data: bytes) -> str:
    """MT940 text: UTF-8 when it decodes as such, else Latin-1 (which SWIFT's character set
    fits in, and which decodes any byte)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
