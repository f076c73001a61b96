"""Reading statements, and the finance workflow: acknowledge, dispute, resolve, settle.

The allowed status changes (docs/settlement.md, "Statuses"):

=========================  ==============================  ==============================
action (who)               from                            to
=========================  ==============================  ==============================
acknowledge (partner)      issued                          acknowledged
                           acknowledged                    acknowledged (nothing changes)
dispute (partner)          issued, acknowledged, disputed  disputed
resolve (operator)         disputed, last open dispute     acknowledged
settle (operator, finance) issued, acknowledged            settled
=========================  ==============================  ==============================

Anything else is ``409 statement-closed``: a settled statement never changes again, a disputed
one is settled only after its disputes are resolved. Every change is a ``statement_events``
row (from, to, when, which key, which role) and a newly signed document; the money and the
issued hash of the statement never change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Literal, get_args

from msgspec import Struct
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from coalition import text
from coalition.errors import Conflict, NotFound, StatementClosed, ValidationFailed, invariant
from coalition.ids import new_id
from coalition.money import exponent, format_amount, quantum, to_minor
from coalition.pages import Page, newest_first
from coalition.shapes import row_as
from partners.webhooks import outbox
from partners.webhooks.events import EventType
from settlement.models import (
    DISPUTE_OUTCOMES,
    STATEMENT_STATUSES,
    Dispute,
    Period,
    Statement,
    StatementEvent,
    StatementLine,
)
from settlement.payments.models import StatementPayment
from settlement.signing import signer
from settlement.statements import announce, resign

#: At most this many transaction ids in one dispute.
MAX_DISPUTED_TRANSACTIONS = 100
#: The shape of a ledger transaction id, as a dispute names a statement line.
TRANSACTION_ID = r"txn_[0-9A-Z]{1,36}"
_TRANSACTION_ID = re.compile(TRANSACTION_ID)
#: The largest settlement adjustment, in major units.
MAX_ADJUSTMENT = Decimal("1000000000")
#: The longest dispute reason and resolution note (one line each: :mod:`coalition.text`).
REASON_MAX = 2000
#: The longest payment reference; it is printable ASCII (a bank's remittance field).
PAYMENT_REFERENCE_MAX = 255
#: The characters of a payment reference, as a regular expression's character class.
PAYMENT_REFERENCE_CHARS = r"\x20-\x7e"
#: How far past the server's clock a payment's time may be (the payer's clock runs ahead).
PAID_AT_SKEW = timedelta(minutes=5)


def check_reason(reason: object) -> str:
    """A dispute's reason as stored: one line of 1 to :data:`REASON_MAX` characters."""
    return text.clean(reason, "reason", max_length=REASON_MAX)


def check_note(note: object) -> str | None:
    """A resolution note as stored (None when absent or blank)."""
    if note is None:
        return None
    return text.clean(note, "note", max_length=REASON_MAX, required=False) or None


def check_payment_reference(reference: object) -> str:
    """A payment reference as stored: 1 to :data:`PAYMENT_REFERENCE_MAX` printable ASCII
    characters, trimmed."""
    cleaned = text.clean(reference, "payment_reference", max_length=PAYMENT_REFERENCE_MAX)
    if not cleaned.isascii():
        raise ValidationFailed.at(
            "payment_reference", f"1 to {PAYMENT_REFERENCE_MAX} printable ASCII characters"
        )
    return cleaned


def check_paid_at(paid_at: datetime, *, period_end: datetime, now: datetime) -> datetime:
    """When a statement was paid: not before the day its period ended (nothing was owed
    before), not later than now (give or take :data:`PAID_AT_SKEW`)."""
    earliest = period_end.replace(hour=0, minute=0, second=0, microsecond=0)
    if paid_at < earliest:
        raise ValidationFailed.at(
            "paid_at", f"not before {earliest.date().isoformat()}, the day the period ended"
        )
    if paid_at > now + PAID_AT_SKEW:
        raise ValidationFailed.at("paid_at", "may not be in the future")
    return paid_at


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: the key and its role (``partner``, ``operator``, ``finance`` or ``system``).

    A console session acts with its own id (``csn_...``) as ``key_id``; ``on_behalf_of`` is
    then the key it was signed in for (``coalition console-link --key``), or None. Four-eyes
    rules count the person by :attr:`person`."""

    key_id: str | None
    role: str
    partner_id: str | None = None
    on_behalf_of: str | None = None
    via_console: bool = False

    @property
    def person(self) -> str | None:
        """The key the four-eyes rules count this actor as: an API key itself, a console
        session's key (None for a session tied to no key)."""
        return self.on_behalf_of if self.via_console else self.key_id


def get_statement(session: Session, statement_id: str, *, partner_id: str | None) -> Statement:
    """A statement; for a partner only its own (another's is :class:`NotFound`)."""
    statement = session.get(Statement, statement_id, populate_existing=True)
    if statement is None or (partner_id is not None and statement.partner_id != partner_id):
        raise NotFound(f"no statement {statement_id!r}")
    return statement


def list_statements(
    session: Session,
    *,
    partner_id: str | None,
    status: str | None,
    period_id: str | None = None,
    before_id: str | None,
    limit: int,
) -> Page[Statement]:
    """Statements, newest first (keyset on the time-ordered id), ``limit`` at most 500."""
    if status is not None and status not in STATEMENT_STATUSES:
        raise ValidationFailed.at("status", f"one of {', '.join(STATEMENT_STATUSES)}")
    query = select(Statement)
    if partner_id is not None:
        query = query.where(Statement.partner_id == partner_id)
    if status is not None:
        query = query.where(Statement.status == status)
    if period_id is not None:
        query = query.where(Statement.period_id == period_id)
    return newest_first(session, query, Statement.id, before_id=before_id, limit=limit)


def _lock(session: Session, statement_id: str, partner_id: str | None) -> Statement:
    statement = session.scalars(
        select(Statement)
        .where(Statement.id == statement_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if statement is None or (partner_id is not None and statement.partner_id != partner_id):
        raise NotFound(f"no statement {statement_id!r}")
    return statement


def _move(
    session: Session,
    statement: Statement,
    to: str,
    actor: Actor,
    *,
    secret_key: bytes,
    now: datetime,
    note: str | None = None,
) -> None:
    before = statement.status
    if before != to:
        resign(session, statement, to, signer(session, secret_key=secret_key, now=now))
    session.execute(
        insert(StatementEvent).values(
            statement_id=statement.id,
            from_status=before,
            to_status=to,
            at=now,
            key_id=actor.key_id,
            role=actor.role,
            note=note,
        )
    )


def acknowledge(
    session: Session, statement_id: str, actor: Actor, *, secret_key: bytes, now: datetime
) -> Statement:
    """The partner has checked the statement: ``issued`` -> ``acknowledged``."""
    statement = _lock(session, statement_id, actor.partner_id)
    if statement.status == "acknowledged":
        return statement
    if statement.status != "issued":
        raise StatementClosed(
            f"statement {statement.id} is {statement.status}; only an issued statement can be "
            "acknowledged"
        )
    _move(session, statement, "acknowledged", actor, secret_key=secret_key, now=now)
    return statement


def open_dispute(
    session: Session,
    statement_id: str,
    actor: Actor,
    *,
    reason: str,
    transaction_ids: list[str],
    secret_key: bytes,
    now: datetime,
) -> Dispute:
    """A partner disputes its statement, naming (optionally) lines by transaction id."""
    reason = check_reason(reason)
    statement = _lock(session, statement_id, actor.partner_id)
    if statement.status == "settled":
        raise StatementClosed(f"statement {statement.id} is settled and can no longer be disputed")
    if len(transaction_ids) > MAX_DISPUTED_TRANSACTIONS:
        raise ValidationFailed.at(
            "transaction_ids", f"at most {MAX_DISPUTED_TRANSACTIONS} transaction ids"
        )
    for index, txn_id in enumerate(transaction_ids):
        if not isinstance(txn_id, str) or _TRANSACTION_ID.fullmatch(txn_id) is None:
            raise ValidationFailed.at(f"transaction_ids[{index}]", "a transaction id (txn_...)")
    wanted = list(dict.fromkeys(transaction_ids))
    if wanted:
        on_statement = set(
            session.scalars(
                select(StatementLine.transaction_id).where(
                    StatementLine.statement_id == statement.id,
                    StatementLine.transaction_id.in_(wanted),
                )
            )
        )
        for index, txn_id in enumerate(transaction_ids):
            if txn_id not in on_statement:
                raise ValidationFailed.at(
                    f"transaction_ids[{index}]", f"{txn_id} is not a line of {statement.id}"
                )
        _refuse_lines_in_open_disputes(session, statement.id, wanted)
    dispute = Dispute(
        id=new_id("dsp"),
        statement_id=statement.id,
        partner_id=statement.partner_id,
        reason=reason,
        transaction_ids=" ".join(wanted),
        status="open",
        created_at=now,
        created_by_key=actor.key_id,
    )
    session.add(dispute)
    session.flush()
    _move(session, statement, "disputed", actor, secret_key=secret_key, now=now, note=dispute.id)
    return dispute


def _refuse_lines_in_open_disputes(session: Session, statement_id: str, wanted: list[str]) -> None:
    """:class:`Conflict` naming the open dispute that names one of ``wanted`` already. The
    statement's row lock (taken by the caller) serialises disputes of one statement, so two
    racing disputes of one line cannot both pass."""
    open_disputes = session.execute(
        select(Dispute.id, Dispute.transaction_ids)
        .where(Dispute.statement_id == statement_id, Dispute.status == "open")
        .order_by(Dispute.id)
    )
    for dispute_id, named in open_disputes:
        both = [txn for txn in wanted if txn in set(named.split())]
        if both:
            raise Conflict(
                f"{', '.join(both)} {'is' if len(both) == 1 else 'are'} disputed already, in "
                f"the open dispute {dispute_id}; wait for its resolution, or dispute other lines",
                dispute_id=dispute_id,
            )


def get_dispute(session: Session, dispute_id: str, *, partner_id: str | None) -> Dispute:
    """A dispute; for a partner only its own (another's is :class:`NotFound`)."""
    dispute = session.get(Dispute, dispute_id, populate_existing=True)
    if dispute is None or (partner_id is not None and dispute.partner_id != partner_id):
        raise NotFound(f"no dispute {dispute_id!r}")
    return dispute


def disputes_of(session: Session, statement_id: str, *, partner_id: str | None) -> list[Dispute]:
    """A statement's disputes, oldest first (NotFound for another partner's statement)."""
    get_statement(session, statement_id, partner_id=partner_id)
    return list(
        session.scalars(
            select(Dispute).where(Dispute.statement_id == statement_id).order_by(Dispute.id)
        )
    )


def _adjustment_minor(raw: str | None, currency: str) -> int | None:
    if raw is None:
        return None
    try:
        value = Decimal(raw)
    except (InvalidOperation, TypeError):
        raise ValidationFailed.at("adjustment", "a signed decimal amount") from None
    if not value.is_finite() or value == 0 or abs(value) > MAX_ADJUSTMENT:
        raise ValidationFailed.at(
            "adjustment", f"a non-zero amount of at most {MAX_ADJUSTMENT} {currency}"
        )
    if value != value.quantize(quantum(currency)):
        raise ValidationFailed.at(
            "adjustment", f"{currency} amounts have at most {exponent(currency)} decimal places"
        )
    return to_minor(value.quantize(quantum(currency)), currency)


def resolve(
    session: Session,
    dispute_id: str,
    actor: Actor,
    *,
    outcome: str,
    note: str | None,
    adjustment: str | None,
    secret_key: bytes,
    now: datetime,
) -> Dispute:
    """The operator resolves a dispute. ``adjustment`` (partner's currency, either sign: +
    the operator pays more) becomes an ``adjustment`` line on the partner's next statement.
    The statement returns to ``acknowledged`` when its last open dispute is resolved."""
    dispute = session.scalars(
        select(Dispute)
        .where(Dispute.id == dispute_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if dispute is None:
        raise NotFound(f"no dispute {dispute_id!r}")
    statement = _lock(session, dispute.statement_id, None)
    if outcome not in DISPUTE_OUTCOMES:
        raise ValidationFailed.at("outcome", f"one of {', '.join(DISPUTE_OUTCOMES)}")
    note = check_note(note)
    minor = _adjustment_minor(adjustment, statement.currency)
    if minor is not None and outcome == "rejected":
        raise ValidationFailed.at("adjustment", "a rejected dispute carries no adjustment")
    if dispute.status != "open":
        raise Conflict(f"dispute {dispute.id} is resolved already")
    session.execute(
        update(Dispute)
        .where(Dispute.id == dispute.id)
        .values(
            status="resolved",
            outcome=outcome,
            resolution_note=note,
            adjustment_minor=minor,
            resolved_at=now,
            resolved_by_key=actor.key_id,
        )
        .execution_options(synchronize_session=False)
    )
    still_open = session.scalar(
        select(func.count())
        .select_from(Dispute)
        .where(Dispute.statement_id == statement.id, Dispute.status == "open")
    )
    if not still_open and statement.status == "disputed":
        _move(
            session,
            statement,
            "acknowledged",
            actor,
            secret_key=secret_key,
            now=now,
            note=f"{dispute.id} {outcome}",
        )
    session.refresh(dispute)
    outbox.note(
        session,
        EventType.DISPUTE_RESOLVED,
        dispute.partner_id,
        dispute_out(dispute, statement.currency),
        at=now,
    )
    return dispute


DisputeOutcome = Literal["upheld", "partially_upheld", "rejected"]
invariant(get_args(DisputeOutcome) == DISPUTE_OUTCOMES, "dispute outcomes != the table's")


class DisputeOut(Struct):
    """A dispute of a statement."""

    id: str
    statement_id: str
    partner_id: str
    reason: str
    transaction_ids: list[str]
    status: Literal["open", "resolved"]
    created_at: datetime
    outcome: DisputeOutcome | None
    note: str | None
    adjustment: str | None
    currency: str
    resolved_at: datetime | None


def dispute_out(dispute: Dispute, currency: str) -> DisputeOut:
    """A dispute in the contract's shape (the API's and its ``dispute.resolved`` event's)."""
    adjustment = None
    if dispute.adjustment_minor is not None:
        adjustment = format_amount(dispute.adjustment_minor, currency)
    return row_as(
        DisputeOut,
        dispute,
        transaction_ids=dispute.transaction_ids.split(),
        note=dispute.resolution_note,
        adjustment=adjustment,
        currency=currency,
    )


def settle(
    session: Session,
    statement_id: str,
    actor: Actor,
    *,
    payment_reference: str,
    paid_at: datetime,
    secret_key: bytes,
    now: datetime,
) -> Statement:
    """Record the payment of a statement: ``issued``/``acknowledged`` -> ``settled``."""
    payment_reference = check_payment_reference(payment_reference)
    statement = _lock(session, statement_id, None)
    if statement.status == "settled":
        raise StatementClosed(
            f"statement {statement.id} was settled already ({statement.payment_reference})"
        )
    if statement.status == "disputed":
        raise StatementClosed(
            f"statement {statement.id} has open disputes; resolve them before settling"
        )
    period = session.get_one(Period, statement.period_id)
    check_paid_at(paid_at, period_end=period.end_at, now=now)
    return mark_settled(
        session,
        statement,
        actor,
        payment_reference=payment_reference,
        paid_at=paid_at,
        bank_entry_id=None,
        secret_key=secret_key,
        now=now,
    )


def mark_settled(
    session: Session,
    statement: Statement,
    actor: Actor,
    *,
    payment_reference: str,
    paid_at: datetime,
    bank_entry_id: str | None,
    secret_key: bytes,
    now: datetime,
) -> Statement:
    """Settle a locked, settleable statement with its payment (invariant 7): a bank entry
    (``bank_entry_id``) or, without one, finance's recorded decision; its
    ``statement.settled`` event."""
    session.add(
        StatementPayment(
            statement_id=statement.id,
            kind="decision" if bank_entry_id is None else "bank_entry",
            bank_entry_id=bank_entry_id,
            reference=payment_reference,
            paid_at=paid_at,
            recorded_at=now,
            recorded_by=actor.key_id or actor.role,
        )
    )
    session.flush()
    session.execute(
        update(Statement)
        .where(Statement.id == statement.id)
        .values(payment_reference=payment_reference, paid_at=paid_at)
        .execution_options(synchronize_session=False)
    )
    _move(
        session,
        statement,
        "settled",
        actor,
        secret_key=secret_key,
        now=now,
        note=payment_reference,
    )
    period = session.get_one(Period, statement.period_id)  # resign refreshed the statement
    announce(session, statement, period, EventType.STATEMENT_SETTLED, at=now)
    return statement


def history(session: Session, statement_id: str) -> list[StatementEvent]:
    """A statement's recorded status changes, oldest first."""
    return list(
        session.scalars(
            select(StatementEvent)
            .where(StatementEvent.statement_id == statement_id)
            .order_by(StatementEvent.id)
        )
    )
