"""Bank statements in: each entry of an imported camt.053 or MT940 (parsed by
:mod:`settlement.bankfiles`) either settles the statement it pays or waits in the
reconciliation queue with the reason, until finance resolves it.

An entry **matches** a statement when its ``EndToEndId`` is the statement's id (or else its
remittance text names one), the statement is ``issued`` or ``acknowledged``, and the entry's
amount, currency and direction are what the statement says is owed: money out of the
operator's account when the operator pays (``operator_pays``), into it when the partner pays.
The statement is then settled (``paid_at`` the booking date, ``payment_reference`` the bank's
``AcctSvcrRef`` or else the ``EndToEndId``), with the entry as its payment (invariant 7) and
its ``statement.settled`` event.

Everything else waits in the queue (``GET /v1/admin/reconciliation``) with its reason:
a return or reversal of an earlier payment, an unknown reference, another currency, the
wrong direction, another amount (a partial payment), a statement settled already (the entry
would settle it twice), a disputed statement. ``POST /v1/admin/reconciliation/{id}/resolve``
matches it to a statement (finance's decision, the entry as evidence) or dismisses it with a
note.

A file is kept by its SHA-256: importing the same bytes again changes nothing and answers the
first import's outcome with ``"duplicate": true``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any, Literal

from msgspec import Struct
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from coalition.errors import CoalitionError, Conflict, NotFound, StatementClosed, ValidationFailed
from coalition.ids import new_id
from coalition.money import MoneyError, format_amount
from coalition.pages import Page, newest_first
from coalition.shapes import row_as
from settlement.bankfiles import BankEntry as ParsedEntry
from settlement.bankfiles import BankFileInvalid, BankStatementFile, parse_bank_statement
from settlement.models import Statement
from settlement.payments.models import BankEntry
from settlement.payments.models import BankStatementFile as StoredFile
from settlement.workflow import Actor, mark_settled

#: A statement id where a payment names it (EndToEndId, remittance text).
STATEMENT_ID = re.compile(r"stmt_[0-9A-HJKMNP-TV-Z]{26}")
NOTE_MAX = 2000
REMITTANCE_MAX = 1000


def amount_text(minor: int, currency: str) -> str:
    """An amount in major units (minor units as they are for a currency we do not know)."""
    try:
        return format_amount(minor, currency)
    except MoneyError:
        return str(minor)


@dataclass(frozen=True, slots=True)
class Imported:
    """The outcome of an import: the stored file and its entries."""

    file: StoredFile
    entries: list[BankEntry]
    duplicate: bool


def _lock(session: Session, statement_id: str) -> Statement | None:
    return session.scalars(
        select(Statement)
        .where(Statement.id == statement_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()


def _named(session: Session, entry: ParsedEntry) -> Statement | None:
    """The statement the entry names: its EndToEndId, else the first statement id in its
    remittance text that exists; locked."""
    candidates = []
    if entry.end_to_end_id and STATEMENT_ID.fullmatch(entry.end_to_end_id.strip()):
        candidates.append(entry.end_to_end_id.strip())
    candidates.extend(STATEMENT_ID.findall(entry.remittance or ""))
    for candidate in dict.fromkeys(candidates):
        found = _lock(session, candidate)
        if found is not None:
            return found
    return None


def _direction(credit: bool) -> str:
    return "into" if credit else "out of"


def _mismatch(entry: ParsedEntry, statement: Statement, now: datetime) -> str | None:
    """Why the entry cannot settle the statement it names (None: it settles it)."""
    owed = abs(statement.net_minor)
    if statement.status == "settled":
        return (
            f"would settle twice: statement {statement.id} was settled already "
            f"({statement.payment_reference})"
        )
    if statement.status == "disputed":
        return f"statement {statement.id} has open disputes; resolve them first"
    if statement.direction == "none":
        return f"statement {statement.id} owes nothing (net 0)"
    expected_credit = statement.direction == "partner_pays"
    if entry.credit != expected_credit:
        return (
            f"direction differs: money {_direction(entry.credit)} the operator's account, "
            f"statement {statement.id} expects money {_direction(expected_credit)} it"
        )
    if entry.currency != statement.currency:
        return (
            f"currency differs: the entry is in {entry.currency}, statement {statement.id} in "
            f"{statement.currency}"
        )
    if entry.amount_minor != owed:
        return (
            f"amount differs: the entry is {amount_text(entry.amount_minor, entry.currency)} "
            f"{entry.currency}, statement {statement.id} owes "
            f"{format_amount(owed, statement.currency)} {statement.currency}"
        )
    if _paid_at(entry) > now:
        return "booked in the future"
    return None


def _paid_at(entry: ParsedEntry | BankEntry) -> datetime:
    return datetime.combine(entry.booking_date, time(0), tzinfo=UTC)


def _reference(entry: ParsedEntry | BankEntry, fallback: str) -> str:
    return (entry.bank_reference or entry.end_to_end_id or fallback)[:255]


def _reason_and_statement(
    session: Session, entry: ParsedEntry, now: datetime
) -> tuple[str | None, Statement | None]:
    statement = _named(session, entry)
    if entry.reversal or entry.return_reason:
        what = f"return ({entry.return_reason})" if entry.return_reason else "reversal"
        named = f" of statement {statement.id}'s payment" if statement else ""
        return f"{what}{named}: money back of an earlier payment", statement
    if statement is None:
        return "unknown reference: no statement is named by the EndToEndId or remittance", None
    return _mismatch(entry, statement, now), statement


def _stored(session: Session, file_id: str) -> list[BankEntry]:
    return list(
        session.scalars(
            select(BankEntry).where(BankEntry.file_id == file_id).order_by(BankEntry.line)
        )
    )


def import_statement(
    session: Session, data: bytes, actor: Actor, *, secret_key: bytes, now: datetime
) -> Imported:
    """Import a bank account statement and reconcile it (see the module docstring).
    ValidationFailed for a file that cannot be read (it changes nothing)."""
    sha256 = hashlib.sha256(data).hexdigest()
    seen = session.scalars(select(StoredFile).where(StoredFile.sha256 == sha256)).one_or_none()
    if seen is not None:
        return Imported(seen, _stored(session, seen.id), duplicate=True)
    parsed = _parse(data)
    stored = StoredFile(
        id=new_id("bst"),
        sha256=sha256,
        format=parsed.format,
        bank_statement_id=parsed.statement_id[:140],
        entries=len(parsed.entries),
        imported_at=now,
        imported_by=actor.key_id or actor.role,
        content=data,
    )
    session.add(stored)
    session.flush()
    entries = []
    for parsed_entry in parsed.entries:
        reason, statement = _reason_and_statement(session, parsed_entry, now)
        entry = BankEntry(
            id=new_id("bke"),
            file_id=stored.id,
            line=parsed_entry.line,
            account_iban=parsed_entry.account_iban,
            amount_minor=parsed_entry.amount_minor,
            currency=parsed_entry.currency,
            credit=parsed_entry.credit,
            booking_date=parsed_entry.booking_date,
            end_to_end_id=(parsed_entry.end_to_end_id or None) and parsed_entry.end_to_end_id[:140],
            bank_reference=(parsed_entry.bank_reference or None)
            and parsed_entry.bank_reference[:140],
            remittance=(parsed_entry.remittance or "")[:REMITTANCE_MAX],
            reversal=parsed_entry.reversal,
            return_reason=parsed_entry.return_reason,
            status="unmatched" if reason else "matched",
            statement_id=statement.id if statement is not None else None,
            reason=reason,
        )
        session.add(entry)
        session.flush()
        if reason is None and statement is not None:
            mark_settled(
                session,
                statement,
                actor,
                payment_reference=_reference(parsed_entry, entry.id),
                paid_at=_paid_at(parsed_entry),
                bank_entry_id=entry.id,
                secret_key=secret_key,
                now=now,
            )
        entries.append(entry)
    return Imported(stored, entries, duplicate=False)


def _parse(data: bytes) -> BankStatementFile:
    try:
        return parse_bank_statement(data)
    except BankFileInvalid as exc:
        if isinstance(exc, CoalitionError):
            raise
        raise ValidationFailed.at("", f"not a bank statement this service reads: {exc}") from None


class MatchedOut(Struct):
    """An entry that settled a statement."""

    entry: str
    line: int
    statement_id: str | None


class UnmatchedOut(Struct):
    """An entry waiting in the reconciliation queue, and why."""

    entry: str
    line: int
    amount: str
    currency: str
    reason: str | None
    status: str


class BankStatementImported(Struct):
    """``POST /v1/admin/bank-statements``' answer."""

    id: str
    format: str
    bank_statement_id: str
    entries: int
    matched: list[MatchedOut]
    unmatched: list[UnmatchedOut]
    duplicate: bool


class BankEntryOut(Struct):
    """A bank entry of an imported statement."""

    id: str
    file_id: str
    line: int
    status: Literal["matched", "unmatched", "resolved", "dismissed"]
    reason: str | None
    amount: str
    currency: str
    direction: Literal["credit", "debit"]
    booking_date: date
    end_to_end_id: str | None
    bank_reference: str | None
    remittance: str
    account_iban: str | None
    return_reason: str | None
    reversal: bool
    statement_id: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    note: str | None


def imported_out(imported: Imported) -> BankStatementImported:
    """An import's outcome in the contract's shape."""
    return row_as(
        BankStatementImported,
        imported.file,
        entries=len(imported.entries),
        matched=[
            MatchedOut(entry=e.id, line=e.line, statement_id=e.statement_id)
            for e in imported.entries
            if e.status in ("matched", "resolved")
        ],
        unmatched=[
            row_as(UnmatchedOut, e, entry=e.id, amount=amount_text(e.amount_minor, e.currency))
            for e in imported.entries
            if e.status not in ("matched", "resolved")
        ],
        duplicate=imported.duplicate,
    )


def entry_out(entry: BankEntry) -> BankEntryOut:
    """A bank entry as the reconciliation queue shows it."""
    return row_as(
        BankEntryOut,
        entry,
        amount=amount_text(entry.amount_minor, entry.currency),
        direction="credit" if entry.credit else "debit",
    )


def queue(session: Session, *, limit: int = 100, before_id: str | None = None) -> Page[BankEntry]:
    """The entries waiting for finance, newest first."""
    query = select(BankEntry).where(BankEntry.status == "unmatched")
    return newest_first(session, query, BankEntry.id, before_id=before_id, limit=limit)


def get_entry(session: Session, entry_id: str) -> BankEntry:
    """One bank entry; NotFound if unknown."""
    entry = session.get(BankEntry, entry_id, populate_existing=True)
    if entry is None:
        raise NotFound(f"no bank entry {entry_id!r}")
    return entry


def resolve(
    session: Session,
    entry_id: str,
    actor: Actor,
    *,
    statement_id: str | None,
    note: str,
    secret_key: bytes,
    now: datetime,
) -> BankEntry:
    """Finance resolves a waiting entry: matched to ``statement_id`` (which it then settles,
    the entry as its payment) or, without one, dismissed; ``note`` says why."""
    entry = session.scalars(
        select(BankEntry)
        .where(BankEntry.id == entry_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if entry is None:
        raise NotFound(f"no bank entry {entry_id!r}")
    note = note.strip()
    if not note or len(note) > NOTE_MAX or not all(c in "\n\t" or c.isprintable() for c in note):
        raise ValidationFailed.at("note", f"1 to {NOTE_MAX} characters, no control characters")
    if entry.status != "unmatched":
        raise Conflict(f"bank entry {entry.id} is {entry.status} already")
    values: dict[str, Any] = {"resolved_at": now, "resolved_by": actor.key_id, "note": note}
    if statement_id is None:
        values.update(status="dismissed")
    else:
        if entry.reversal or entry.return_reason:
            raise ValidationFailed.at(
                "statement_id", "a return or reversal pays no statement; dismiss it with a note"
            )
        statement = _lock(session, statement_id)
        if statement is None:
            raise ValidationFailed.at("statement_id", f"no statement {statement_id}")
        if statement.status not in ("issued", "acknowledged"):
            raise StatementClosed(
                f"statement {statement.id} is {statement.status}; only an issued or "
                "acknowledged statement can be settled"
            )
        values.update(status="resolved", statement_id=statement.id)
        session.execute(
            update(BankEntry)
            .where(BankEntry.id == entry.id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        mark_settled(
            session,
            statement,
            actor,
            payment_reference=_reference(entry, entry.id),
            paid_at=min(_paid_at(entry), now),
            bank_entry_id=entry.id,
            secret_key=secret_key,
            now=now,
        )
        return get_entry(session, entry.id)
    session.execute(
        update(BankEntry)
        .where(BankEntry.id == entry.id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return get_entry(session, entry.id)
