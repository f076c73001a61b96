"""What a bank statement file becomes: its entries, the file, and the one error a bad file gives."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from coalition.errors import ValidationFailed
from coalition.money import MoneyError, parse_amount, to_minor

#: The largest bank statement file read (the API caps its request body the same way).
MAX_BANK_FILE_BYTES = 16 * 1024 * 1024


class BankFileInvalid(ValidationFailed):
    """A bank statement file that cannot be read: malformed, another message type, not valid
    against its schema, unsafe XML (a DTD, entities), too large, or an entry whose amount breaks
    the currency's rules. A ``422`` problem of type ``validation`` whose error names the file as a
    whole (``$`` at the API) and, in its message, the entry at fault; ``extra["entry"]`` is that
    entry's 1-based position in the file (camt ``Ntry`` / MT940 ``:61:`` order) when there is one.
    Nothing was read from the file."""

    def __init__(self, message: str, *, entry: int | None = None) -> None:
        where = f"bank statement file, entry {entry}" if entry else "bank statement file"
        super().__init__([{"path": "", "message": f"{where}: {message}"}])
        self.entry = entry
        if entry is not None:
            self.extra["entry"] = entry


@dataclass(frozen=True, slots=True)
class BankEntry:
    """One movement of money on the statement's account, as reconciliation needs it.

    ``line`` is the entry's 1-based position among the file's entries, in file order; it is
    unique within a file. A batched camt entry (several ``TxDtls`` with their own amounts)
    gives one entry per transaction, numbered in order.
    """

    line: int
    account_iban: str | None
    amount_minor: int
    currency: str
    credit: bool
    booking_date: date
    end_to_end_id: str | None
    bank_reference: str | None
    remittance: str
    reversal: bool
    return_reason: str | None


@dataclass(frozen=True, slots=True)
class BankStatementFile:
    """A parsed bank statement file: its format, its statement id(s), its entries in file
    order and the SHA-256 of its bytes (the same file imported twice has the same digest)."""

    format: str
    statement_id: str
    entries: tuple[BankEntry, ...]
    sha256: str


def minor_amount(raw: str, currency: str, *, entry: int) -> int:
    """A positive decimal amount of a file (``"1234.56"``) in minor units of ``currency``, by
    the service's one rule for amounts (:func:`coalition.money.parse_amount`): no more
    decimals than the currency has, above zero, at most the service's limit."""
    try:
        return to_minor(parse_amount(raw, currency), currency)
    except MoneyError as exc:
        raise BankFileInvalid(f"amount {raw} {currency}: {exc}", entry=entry) from None


def decimal_text(value: Decimal) -> str:
    """A Decimal as the plain text :func:`minor_amount` reads (no exponent notation)."""
    return format(value, "f")


def no_reference(value: str | None) -> str | None:
    """A reference as reconciliation uses it: stripped, ``None`` when empty or one of the
    placeholders banks write for "none" (``NOTPROVIDED``, ``NONREF``)."""
    if value is None:
        return None
    text = value.strip()
    return None if not text or text.upper() in {"NOTPROVIDED", "NONREF"} else text
