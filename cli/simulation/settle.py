"""The end of the demo's period: closed, its statements exported and verified, then paid and
reconciled (bank details under four eyes, a payment run's files, the bank's camt.053
statements imported) until every statement is settled."""

from __future__ import annotations

import dataclasses
import json
from datetime import date, datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from cli.simulation.period import Simulation
from cli.simulation.report import cross_brand_lines, table
from cli.simulation.world import PARTNERS
from coalition.config import Settings
from coalition.db import transaction, utcnow
from partners.keys import b64url
from settlement import reports, workflow
from settlement.bankfiles import BankEntry, write_camt053
from settlement.canonical import csv_export, json_export, read_export, verify_document
from settlement.close import close, statements_of
from settlement.models import Period, Statement
from settlement.payments import bank_accounts, reconcile, runs
from settlement.signing import public_keys
from settlement.statements import document_of
from settlement.workflow import Actor

#: Where the demo writes the statement exports (relative to the working directory).
EXPORT_DIR = Path("statements")
#: Where the demo writes the payment files and the bank's statements.
PAYMENTS_DIR = Path("payments")
#: The operator's account when none is configured (valid IBAN and BIC, a test creditor id).
DEMO_OPERATOR = ("Coalition Demo Operator", "DE89370400440532013000", "COBADEFFXXX",
                 "DE98ZZZ09999999999")  # fmt: skip
#: Each demo partner's bank details (valid IBANs); the grocer has a SEPA direct debit mandate.
DEMO_BANK = {
    "grocer": ("Fresh & Co. Grocers SAS", "FR1420041010050500013M02606", "MANDATE-GROCER-1"),
    "airline": ("Sakura Air Europe Ltd", "GB29NWBK60161331926819", None),
    "fuel": ("Route 9 Fuel Inc", "GB82WEST12345698765432", None),
    "books": ("Marlowe Books Ltd", "GB33BUKB20201555555555", None),
    "charity": ("Kind Hearts Foundation", "BE68539007547034", None),
}
#: The two people of finance (four eyes).
FINANCE = (Actor("demo-finance-anna", "finance"), Actor("demo-finance-ben", "finance"))


def settlement(
    settings: Settings, sessions: sessionmaker[Session], sim: Simulation, end: datetime
) -> tuple[list[str], bool]:
    """Close the demo's period at ``end``; the statements, the roll-forward, the cross-brand
    matrix, the exports written and verified. (lines, every statement verified)."""
    closed = close(
        sessions,
        secret_key=settings.secret_key,
        cycle=settings.settlement_cycle,
        tz=settings.tz,
        now=max(utcnow(), end),
        cut_off=end,
    )
    slug = sim.slugs()
    period = closed.period
    lines = [
        "",
        f"Settlement: period {period.id}, posted from {period.start_at:%Y-%m-%d %H:%M} to "
        f"{period.end_at:%Y-%m-%d %H:%M} UTC, closed; one signed statement per partner, "
        "in its currency",
    ]
    EXPORT_DIR.mkdir(exist_ok=True)
    with transaction(sessions) as s:
        rows, first, verified = _export(s, period, slug)
        summary = reports.summary(s, period.id)
    lines += table(
        ["partner", "cur", "lines", "issued", "earn reversed", "reimbursed", "burn reversed",
         "net (+ operator pays)", "direction"],
        rows,
    )  # fmt: skip
    lines += _money_and_roll_forward(summary)
    lines += cross_brand_lines(summary.cross_brand, slug)
    lines += [
        "",
        f"Exports: {EXPORT_DIR.resolve()}/ (JSON and CSV per statement, signing-keys.json);",
        "  every statement verified" if verified else "  A STATEMENT DID NOT VERIFY",
        f"  check one yourself: coalition statements verify {first.resolve()}"
        f" --keys {(EXPORT_DIR / 'signing-keys.json').resolve()}"
        if first is not None
        else "",
    ]
    return lines, verified and summary.balances


def _export(
    s: Session, period: Period, slug: dict[str, str]
) -> tuple[list[list[object]], Path | None, bool]:
    """Write the signing keys and each statement's JSON and CSV exports, each read back and
    verified; (a table row per statement, the first export, every export verified)."""
    keys = {k.kid: k.public_key for k in public_keys(s)}
    (EXPORT_DIR / "signing-keys.json").write_text(
        json.dumps([{"kid": k, "alg": "ed25519", "public_key": b64url(v)} for k, v in keys.items()])
    )
    verified = True
    rows: list[list[object]] = []
    first: Path | None = None
    for statement in statements_of(s, period.id):
        document = document_of(statement)
        t = document["totals"]
        name = f"{slug[statement.partner_id]}-{statement.id}"
        for suffix, content in (("json", json_export(document)), ("csv", csv_export(document))):
            path = EXPORT_DIR / f"{name}.{suffix}"
            path.write_bytes(content)
            first = first or path
            verified = verified and _verifies(path, keys)
        rows.append(
            [slug[statement.partner_id], statement.currency, statement.line_count,
             t["issued_amount"], t["earn_reversed_amount"], t["reimbursed_amount"],
             t["burn_reversed_amount"], t["net_amount"], t["direction"]]
        )  # fmt: skip
    return rows, first, verified


def _verifies(path: Path, keys: dict[str, bytes]) -> bool:
    """Whether the export at ``path``, read back as a verifier would, verifies."""
    return verify_document(read_export(path.read_bytes()).document, keys).ok


def _money_and_roll_forward(summary: reports.Summary) -> list[str]:
    lines = ["", "  operator's money, per currency (billed - reimbursed - adjustments = margin)"]
    lines += table(
        ["currency", "billed", "reimbursed", "adjustments", "margin"],
        [[d.currency, d.billed, d.reimbursed, d.adjustments, d.margin]
         for d in (m.document() for m in summary.money)],
    )  # fmt: skip
    f = summary.flows
    return [
        *lines,
        "",
        "  points roll-forward: opening + issued + bonuses - redeemed - expired"
        " - earn reversed + burn reversed + adjusted = closing",
        f"  {summary.opening_points:,} + {f.earned_points:,} + {f.bonus_points:,}"
        f" - {f.redeemed_points:,} - {f.expired_points:,} - {f.earn_reversed_points:,}"
        f" + {f.burn_reversed_points:,} + {f.adjusted_points:,} = {summary.closing_points:,}"
        f" ({'balances' if summary.balances else 'DOES NOT BALANCE'});"
        f" breakage {reports.share(f.expired_points, f.issued_points)},"
        f" active members {summary.active_members}",
    ]


def payments(
    settings: Settings, sessions: sessionmaker[Session], sim: Simulation
) -> tuple[list[str], bool]:
    """Pay and reconcile the period: bank details under four eyes, every statement
    acknowledged, a payment run (its files to ``payments/``), the bank's camt.053 per currency
    (every payment, and the partners' own transfers for what the run skipped) written with
    ``write_camt053``, imported: every statement ends settled. (lines, all settled)."""
    settings = _with_operator_account(settings)
    now = utcnow()
    today = now.date()
    with transaction(sessions) as s:
        _approve_bank_details(s, sim, today, now)
        period = reports.list_periods(s, before_id=None, limit=1)[0][0]
        statements = list(statements_of(s, period.id))
        run = _pay(s, settings, statements, today, now)
    PAYMENTS_DIR.mkdir(exist_ok=True)
    for made in run.files:
        (PAYMENTS_DIR / made.name).write_bytes(made.content)
    entries = _bank_entries(settings, statements, run, today)
    imported = _import_bank_statements(settings, sessions, entries, today, now)
    with transaction(sessions) as s:
        settled = [workflow.get_statement(s, st.id, partner_id=None) for st in statements]
        all_settled = all(st.status == "settled" for st in settled)
    return _payment_lines(run, imported, all_settled), all_settled


def _with_operator_account(settings: Settings) -> Settings:
    """The settings with the demo operator's account unless one is configured."""
    if settings.operator_iban:
        return settings
    name, iban, bic, creditor_id = DEMO_OPERATOR
    return dataclasses.replace(
        settings,
        operator_name=name,
        operator_iban=iban,
        operator_bic=bic,
        sepa_creditor_id=creditor_id,
    )


def _approve_bank_details(s: Session, sim: Simulation, today: date, now: datetime) -> None:
    """Each partner's bank details, proposed by one of finance and approved by the other."""
    for spec in PARTNERS:
        holder, iban, mandate = DEMO_BANK[spec.slug]
        details = bank_accounts.check_details(
            holder=holder,
            iban=iban,
            bic=None,
            mandate_id=mandate,
            mandate_signed_on=today - timedelta(days=90) if mandate else None,
            today=today,
        )
        partner_id = sim.partners[spec.slug].id
        bank_accounts.propose(s, partner_id, FINANCE[0], details, now=now)
        bank_accounts.approve(s, partner_id, FINANCE[1], now=now)


def _pay(
    s: Session, settings: Settings, statements: list[Statement], today: date, now: datetime
) -> runs.RunView:
    """Every statement acknowledged by its partner, then a payment run; a statement with
    nothing to pay is settled by finance's recorded decision."""
    for statement in statements:
        workflow.acknowledge(
            s,
            statement.id,
            Actor(None, "partner", statement.partner_id),
            secret_key=settings.secret_key,
            now=now,
        )
    run = runs.create_run(
        s, FINANCE[0], statement_ids=None, execution_date=today, settings=settings, now=now
    )
    for statement in statements:
        if statement.net_minor == 0:  # nothing moves: finance records it
            workflow.settle(
                s,
                statement.id,
                FINANCE[1],
                payment_reference="nothing to pay",
                paid_at=now,
                secret_key=settings.secret_key,
                now=now,
            )
    return run


def _bank_entries(
    settings: Settings, statements: list[Statement], run: runs.RunView, today: date
) -> dict[str, list[BankEntry]]:
    """The bank's entries per currency: the run's payments, and the partners' own transfers
    for the statements the run skipped."""
    paid = {item.statement_id for item in run.items if item.direction != "skipped"}
    entries: dict[str, list[BankEntry]] = {}
    for number, statement in enumerate(statements, start=1):
        if statement.net_minor == 0:
            continue
        own = statement.id not in paid
        entries.setdefault(statement.currency, []).append(
            BankEntry(
                line=0,
                account_iban=settings.operator_iban,
                amount_minor=abs(statement.net_minor),
                currency=statement.currency,
                credit=statement.net_minor < 0,
                booking_date=today,
                # the partner's own transfer quotes the statement in its remittance only
                end_to_end_id=None if own else statement.id,
                bank_reference=f"DEMO{today:%Y%m%d}{number:05d}",
                remittance=f"Coalition statement {statement.id}" if own else "",
                reversal=False,
                return_reason=None,
            )
        )
    return entries


def _import_bank_statements(
    settings: Settings,
    sessions: sessionmaker[Session],
    entries: dict[str, list[BankEntry]],
    today: date,
    now: datetime,
) -> list[tuple[str, reconcile.BankStatementImported]]:
    """A camt.053 per currency, written to ``payments/`` and imported as ``coalition bank
    import`` does; (file name, the import's outcome) each."""
    imported = []
    for currency, batch in sorted(entries.items()):
        camt = write_camt053(
            statement_id=f"DEMO-{today:%Y%m%d}-{currency}",
            account_iban=settings.operator_iban or "",
            entries=batch,
            created_at=now.replace(tzinfo=None, microsecond=0),
        )
        path = PAYMENTS_DIR / f"bank-statement-{today:%Y-%m-%d}-{currency}.camt053.xml"
        path.write_bytes(camt)
        with transaction(sessions) as s:
            done = reconcile.import_statement(
                s, camt, FINANCE[0], secret_key=settings.secret_key, now=utcnow()
            )
            imported.append((path.name, reconcile.imported_out(done)))
    return imported


def _payment_lines(
    run: runs.RunView,
    imported: list[tuple[str, reconcile.BankStatementImported]],
    all_settled: bool,
) -> list[str]:
    data = runs.run_out(run)
    return [
        "",
        f"Payments: bank details approved under four eyes; payment run {run.run.id} "
        f"({len(data.payments)} payments, {len(data.skipped)} paid by the partner's own "
        "transfer)",
        *(
            f"  {f.name}: {f.format}, {f.transactions} payment(s), {f.control_sum} {f.currency}"
            for f in data.files
        ),
        "  the bank's statements, imported as `coalition bank import` does:",
        *(
            f"  {name}: {len(result.matched)} of {result.entries} entries settled their statement"
            for name, result in imported
        ),
        f"Files: {PAYMENTS_DIR.resolve()}/",
        "  every statement settled by its payment"
        if all_settled
        else "  A STATEMENT IS NOT SETTLED",
    ]
