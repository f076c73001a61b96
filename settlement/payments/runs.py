"""Payment runs: which acknowledged statements the operator pays (credit transfers) or
collects (SEPA direct debits), the files for the bank, and cancelling a run.

A run takes the statements asked for (default: every ``acknowledged`` statement with a
non-zero net in no live run), locks them (``SELECT ... FOR UPDATE``, in id order), and for each
decides:

- the operator pays (net > 0) and the partner has active bank details: a credit transfer in
  the statement's currency (``pain.001.001.09``);
- the partner pays (net < 0), in EUR, and its active details hold a mandate: a SEPA direct
  debit (``pain.008.001.08``);
- anything else is skipped with the reason (the partner then pays by its own transfer, which
  the reconciliation recognises by the statement id in its remittance text).

A statement is in at most one live run: the lock makes a concurrent run wait and then see the
first run's payment (the statement is skipped), and the partial unique index
``uq_payment_items_live_statement`` holds it in the schema whatever the code does. Cancelling a
run (finance) frees its statements for a later run; a run one of whose statements is settled
already cannot be cancelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Literal

from msgspec import Struct
from schwifty import BIC, IBAN
from schwifty.exceptions import SchwiftyException
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from coalition.config import Settings
from coalition.errors import (
    Conflict,
    NotFound,
    PaymentsNotConfigured,
    ValidationFailed,
    required,
)
from coalition.ids import new_id
from coalition.money import format_amount
from coalition.shapes import row_as
from settlement.models import Period, Statement
from settlement.payments import files
from settlement.payments.bank_accounts import active_account, pending_account
from settlement.payments.models import PartnerBankAccount, PaymentFile, PaymentItem, PaymentRun
from settlement.workflow import Actor

#: Statements one run may name at most.
MAX_STATEMENTS = 1000
#: How far ahead an execution date may be.
MAX_AHEAD = timedelta(days=366)
NOTE_MAX = 500


def operator_account(settings: Settings, *, direct_debits: bool) -> files.Operator:
    """The operator's own account from ``COALITION_OPERATOR_*``, or ``payments-not-configured``
    naming what is missing or wrong."""
    wanted = {
        "COALITION_OPERATOR_NAME": settings.operator_name,
        "COALITION_OPERATOR_IBAN": settings.operator_iban,
        "COALITION_OPERATOR_BIC": settings.operator_bic,
    }
    if direct_debits:
        wanted["COALITION_SEPA_CREDITOR_ID"] = settings.sepa_creditor_id
    missing = [name for name, value in wanted.items() if not value]
    if missing:
        raise PaymentsNotConfigured(
            f"payment files need the operator's account: set {', '.join(missing)}"
        )
    try:
        iban = IBAN(settings.operator_iban or "").compact
        bic = str(BIC(settings.operator_bic or ""))
    except SchwiftyException as exc:
        raise PaymentsNotConfigured(
            f"COALITION_OPERATOR_IBAN or COALITION_OPERATOR_BIC is not valid: {exc}"
        ) from None
    return files.Operator(settings.operator_name or "", iban, bic, settings.sepa_creditor_id)


def remittance(statement: Statement, period: Period) -> str:
    """A payment's remittance text: the statement and its period (what an incoming transfer
    should quote too)."""
    return (
        f"Coalition statement {statement.id} period "
        f"{period.start_at:%Y-%m-%d} to {period.end_at:%Y-%m-%d}"
    )


@dataclass(frozen=True, slots=True)
class RunView:
    """A run with its items and files."""

    run: PaymentRun
    items: list[PaymentItem]
    files: list[PaymentFile]


def _execution(execution_date: date | None, today: date) -> date:
    if execution_date is None:
        return today
    if execution_date < today:
        raise ValidationFailed.at("execution_date", "may not be in the past")
    if execution_date > today + MAX_AHEAD:
        raise ValidationFailed.at("execution_date", "at most a year ahead")
    return execution_date


def _candidates(session: Session, statement_ids: list[str] | None) -> list[Statement]:
    if statement_ids is None:
        live = select(PaymentItem.statement_id).where(PaymentItem.live)
        query = select(Statement).where(
            Statement.status == "acknowledged",
            Statement.net_minor != 0,
            Statement.id.not_in(live),
        )
    else:
        if not 1 <= len(statement_ids) <= MAX_STATEMENTS:
            raise ValidationFailed.at("statement_ids", f"1 to {MAX_STATEMENTS} statement ids")
        query = select(Statement).where(Statement.id.in_(set(statement_ids)))
    rows = list(
        session.scalars(
            query.order_by(Statement.id).with_for_update().execution_options(populate_existing=True)
        )
    )
    if statement_ids is not None:
        found = {row.id for row in rows}
        for index, statement_id in enumerate(statement_ids):
            if statement_id not in found:
                raise ValidationFailed.at(f"statement_ids[{index}]", f"no statement {statement_id}")
    return rows


def _skip_reason(
    session: Session, statement: Statement, live_runs: dict[str, str]
) -> tuple[str | None, PartnerBankAccount | None]:
    """Why the statement is not paid by this run (None: it is), and the details it is paid
    with."""
    if statement.status != "acknowledged":
        return f"the statement is {statement.status}; a run pays acknowledged statements", None
    if statement.net_minor == 0:
        return "nothing to pay: the net amount is 0", None
    if statement.id in live_runs:
        return f"already in payment run {live_runs[statement.id]}", None
    account = active_account(session, statement.partner_id)
    waiting = (
        " (new details wait for a second finance key's approval)"
        if pending_account(session, statement.partner_id) is not None
        else ""
    )
    if statement.net_minor > 0:
        if account is None:
            return f"the partner has no active bank details{waiting}", None
        return None, account
    if statement.currency != "EUR":
        return "the partner pays by its own transfer (direct debits are in EUR only)", None
    if account is None or account.mandate_id is None:
        return f"the partner pays by its own transfer (no SEPA direct debit mandate){waiting}", None
    return None, account


def _sequence(session: Session, account: PartnerBankAccount) -> str:
    """``FRST`` for a mandate's first collection, ``RCUR`` after."""
    earlier = session.scalar(
        select(func.count())
        .select_from(PaymentItem)
        .join(PartnerBankAccount, PartnerBankAccount.id == PaymentItem.bank_account_id)
        .where(
            PaymentItem.live,
            PaymentItem.direction == "direct_debit",
            PartnerBankAccount.partner_id == account.partner_id,
            PartnerBankAccount.mandate_id == account.mandate_id,
        )
    )
    return "RCUR" if earlier else "FRST"


def create_run(
    session: Session,
    actor: Actor,
    *,
    statement_ids: list[str] | None,
    execution_date: date | None,
    settings: Settings,
    now: datetime,
) -> RunView:
    """A payment run (see the module docstring); its files are built and stored now."""
    execution = _execution(execution_date, now.date())
    statements = _candidates(session, statement_ids)
    run = PaymentRun(
        id=new_id("pay"),
        execution_date=execution,
        status="created",
        created_at=now,
        created_by=actor.key_id or actor.role,
    )
    session.add(run)
    session.flush()
    planned = _plan(session, run, statements)
    stored = _store(run, _build(planned, run, settings, execution, now))
    session.add_all(planned.items)
    session.add_all(stored)
    session.flush()
    return RunView(run, planned.items, stored)


_Paid = list[tuple[PaymentItem, files.Instruction]]
_Built = list[tuple[files.Built, list[PaymentItem]]]


@dataclass
class _Planned:
    """What a run pays: an item per statement, and the instructions of the live ones (credit
    transfers by currency, direct debits)."""

    items: list[PaymentItem] = field(default_factory=list)
    transfers: dict[str, _Paid] = field(default_factory=dict)
    debits: _Paid = field(default_factory=list)


def _plan(session: Session, run: PaymentRun, statements: Sequence[Statement]) -> _Planned:
    """An item per statement (skipped with its reason, or live with its instruction)."""
    ids = [s.id for s in statements]
    live_runs = {
        statement_id: run_id
        for statement_id, run_id in session.execute(
            select(PaymentItem.statement_id, PaymentItem.run_id).where(
                PaymentItem.live, PaymentItem.statement_id.in_(ids)
            )
        )
    }
    periods = {
        p.id: p
        for p in session.scalars(
            select(Period).where(Period.id.in_({s.period_id for s in statements}))
        )
    }
    planned = _Planned()
    for statement in statements:
        reason, account = _skip_reason(session, statement, live_runs)
        item = PaymentItem(
            run_id=run.id,
            statement_id=statement.id,
            partner_id=statement.partner_id,
            direction="skipped",
            amount_minor=abs(statement.net_minor),
            currency=statement.currency,
            end_to_end_id=statement.id,
            reason=reason,
            live=False,
        )
        planned.items.append(item)
        if reason is None and account is not None:
            item.bank_account_id = account.id
            item.live = True
            instruction = files.Instruction(
                end_to_end_id=statement.id,
                amount_minor=abs(statement.net_minor),
                currency=statement.currency,
                name=account.holder,
                iban=account.iban,
                bic=account.bic,
                remittance=remittance(statement, periods[statement.period_id]),
                mandate_id=account.mandate_id,
                mandate_signed_on=account.mandate_signed_on,
            )
            if statement.net_minor > 0:
                item.direction = "credit_transfer"
                planned.transfers.setdefault(statement.currency, []).append((item, instruction))
            else:
                item.direction = "direct_debit"
                sequence = _sequence(session, account)
                planned.debits.append((item, replace(instruction, sequence=sequence)))
    return planned


def _build(
    planned: _Planned, run: PaymentRun, settings: Settings, execution: date, now: datetime
) -> _Built:
    """The run's files: a pain.001 per currency of its credit transfers, a pain.008 of its
    direct debits; each with the items it pays."""
    built: _Built = []
    if not (planned.transfers or planned.debits):
        return built
    operator = operator_account(settings, direct_debits=bool(planned.debits))
    for currency, pairs in sorted(planned.transfers.items()):
        made = files.credit_transfers(
            run.id,
            operator,
            created_at=now,
            execution=execution,
            currency=currency,
            payments=[i for _, i in pairs],
        )
        built.append((made, [item for item, _ in pairs]))
    if planned.debits:
        made = files.direct_debits(
            run.id,
            operator,
            created_at=now,
            execution=execution,
            payments=[i for _, i in planned.debits],
        )
        built.append((made, [item for item, _ in planned.debits]))
    return built


def _store(run: PaymentRun, built: _Built) -> list[PaymentFile]:
    """The built files as rows, each item naming the file that pays it."""
    stored = []
    for made, paid in built:
        for item in paid:
            item.file_name = made.name
        stored.append(
            PaymentFile(
                run_id=run.id,
                name=made.name,
                format=made.format,
                currency=made.currency,
                transactions=made.transactions,
                control_sum_minor=made.control_sum_minor,
                content=made.content,
                sha256=made.sha256,
            )
        )
    return stored


def get_run(session: Session, run_id: str) -> RunView:
    """A run with its items (in statement order) and files; NotFound if unknown."""
    run = session.get(PaymentRun, run_id, populate_existing=True)
    if run is None:
        raise NotFound(f"no payment run {run_id!r}")
    items = list(
        session.scalars(
            select(PaymentItem).where(PaymentItem.run_id == run_id).order_by(PaymentItem.id)
        )
    )
    stored = list(
        session.scalars(
            select(PaymentFile).where(PaymentFile.run_id == run_id).order_by(PaymentFile.name)
        )
    )
    return RunView(run, items, stored)


def list_runs(session: Session, *, limit: int = 100) -> list[PaymentRun]:
    """The latest runs, newest first."""
    return list(session.scalars(select(PaymentRun).order_by(PaymentRun.id.desc()).limit(limit)))


def get_file(session: Session, run_id: str, name: str) -> PaymentFile:
    """One file of a run; NotFound if unknown."""
    found = session.get(PaymentFile, (run_id, name))
    if found is None:
        raise NotFound(f"no file {name!r} in payment run {run_id!r}")
    return found


def cancel_run(
    session: Session, run_id: str, actor: Actor, *, note: str | None, now: datetime
) -> RunView:
    """Cancel a run: its statements may be paid by a later run. Conflict when it is cancelled
    already or one of its statements is settled (its money moved)."""
    run = session.scalars(
        select(PaymentRun)
        .where(PaymentRun.id == run_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if run is None:
        raise NotFound(f"no payment run {run_id!r}")
    if note is not None and (len(note) > NOTE_MAX or not note.isprintable()):
        raise ValidationFailed.at("note", f"at most {NOTE_MAX} printable characters")
    if run.status == "cancelled":
        raise Conflict(f"payment run {run_id} was cancelled already")
    settled = session.scalars(
        select(Statement.id)
        .join(PaymentItem, PaymentItem.statement_id == Statement.id)
        .where(PaymentItem.run_id == run_id, PaymentItem.live, Statement.status == "settled")
        .limit(1)
    ).first()
    if settled is not None:
        raise Conflict(
            f"statement {settled} of payment run {run_id} is settled: the run's money moved, "
            "so it cannot be cancelled"
        )
    session.execute(
        update(PaymentItem)
        .where(PaymentItem.run_id == run_id)
        .values(live=False)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(PaymentRun)
        .where(PaymentRun.id == run_id)
        .values(status="cancelled", cancelled_at=now, cancelled_by=actor.key_id, cancel_note=note)
        .execution_options(synchronize_session=False)
    )
    return get_run(session, run_id)


class PaymentOut(Struct):
    """One payment of a run."""

    statement_id: str
    partner_id: str
    direction: Literal["credit_transfer", "direct_debit"]
    amount: str
    currency: str
    end_to_end_id: str
    file: str | None


class SkippedOut(Struct):
    """A statement the run does not pay, and why."""

    statement_id: str
    reason: str


class PaymentFileOut(Struct):
    """A file of a run (download it at ``.../files/{name}``)."""

    name: str
    format: Literal["pain.001.001.09", "pain.008.001.08"]
    currency: str
    transactions: int
    control_sum: str
    sha256: str


class PaymentRunOut(Struct):
    """A payment run."""

    id: str
    status: Literal["created", "cancelled"]
    execution_date: date
    created_at: datetime
    cancelled_at: datetime | None
    payments: list[PaymentOut]
    skipped: list[SkippedOut]
    files: list[PaymentFileOut]


def run_out(view: RunView) -> PaymentRunOut:
    """A run in the contract's shape (``POST /v1/admin/payment-runs``' answer)."""
    return row_as(
        PaymentRunOut,
        view.run,
        payments=[
            row_as(
                PaymentOut, i, amount=format_amount(i.amount_minor, i.currency), file=i.file_name
            )
            for i in view.items
            if i.direction != "skipped"
        ],
        skipped=[
            SkippedOut(statement_id=i.statement_id, reason=required(i.reason, "a skip's reason"))
            for i in view.items
            if i.direction == "skipped"
        ],
        files=[
            row_as(PaymentFileOut, f, control_sum=format_amount(f.control_sum_minor, f.currency))
            for f in view.files
        ],
    )
