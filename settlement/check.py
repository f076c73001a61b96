"""``coalition check``, settlement's part: invariant 4 (the liability adds up at any moment)
and invariant 5 (every closed period's statements), besides the kernel's 1 to 3 and the
webhooks' 6 (``partners.webhooks.check``), which :func:`run_checks` runs with them.

Invariant 5, for every issued statement:
- its totals are the exact sums of its lines (one ``GROUP BY`` over all lines);
- each line matches its ledger transaction (kind, points, times, partner) and rate card (the
  price of its kind), and its amount is ``points x unit_price`` half-even; its statement
  exists, and an adjustment line is its dispute's adjustment (lines have no foreign keys);
- every billable transaction posted before the latest period's start is on a statement, so the
  lines of all partners add up to the ledger's billable aggregates;
- its document still hashes to its ``content_sha256`` and, with the status put back to
  ``issued``, to its ``issued_sha256`` (the issued statement never changed), its lines and
  totals are the stored ones, and its signature verifies with the published key.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import bindparam, func, select, text
from sqlalchemy.orm import Session

from coalition.check import SAMPLE, Finding, sample_rows
from coalition.check import run_checks as kernel_checks
from coalition.db import UTCDateTime
from coalition.ledger.kinds import BILLED_KINDS
from coalition.models import Transaction
from partners.webhooks import check as webhook_checks
from settlement.canonical import canonical_json, canonical_value, content_sha256, verify_document
from settlement.close import last_period
from settlement.document import plain
from settlement.lines import (
    NET_SIGNS,
    PRICE_SQL,
    amount_sql,
    fits_sql,
    lines_and_totals,
    register_sqlite_functions,
    total_sums,
)
from settlement.models import Statement
from settlement.reports import liability
from settlement.signing import public_keys
from settlement.statements import document_of, totals_of

#: Moments between the first and the last posting at which invariant 4 is checked.
LIABILITY_STEPS = 24
#: Statements whose documents the check reads, at most (newest first): a bound on the audit.
DOCUMENTS_CHECKED = 10_000


# The members' points at a moment read from the accounts themselves (what the transfers up to
# it credited to member accounts less what they debited from them), against the kinds table's
# reading (``reports.liability``) and the flows by kind.
_BY_ACCOUNTS = text(
    """
SELECT COALESCE(SUM(CASE WHEN ca.kind = 'member' THEN t.points ELSE 0 END), 0)
     - COALESCE(SUM(CASE WHEN da.kind = 'member' THEN t.points ELSE 0 END), 0)
FROM transactions t
JOIN accounts da ON da.id = t.debit_account_id
JOIN accounts ca ON ca.id = t.credit_account_id
WHERE t.posted_at <= :at
"""
).bindparams(bindparam("at", type_=UTCDateTime()))


def _liability(session: Session) -> list[str]:
    first, last = session.execute(
        select(func.min(Transaction.posted_at), func.max(Transaction.posted_at))
    ).one()
    if first is None or last is None:
        return []
    moments = sorted(
        {first + (last - first) * i / LIABILITY_STEPS for i in range(LIABILITY_STEPS + 1)}
    )
    problems = []
    for at in moments:
        report = liability(session, at)
        expected = report.flows.net_points
        by_accounts = int(session.scalar(_BY_ACCOUNTS, {"at": at}) or 0)
        if not expected == report.outstanding_points == by_accounts:
            problems.append(
                f"at {at.isoformat()}: issued+bonuses-redeemed-expired+/-reversals+/-adjustments"
                f" = {expected}, members' transfers by kind = {report.outstanding_points},"
                f" by account = {by_accounts}"
            )
    return problems[:SAMPLE]


# Each issued statement's stored totals against the sums of its lines (the same sums the close
# writes, ``statements.total_sums``), and its net against the totals with their signs.
_TOTALS = total_sums("")
_NET = " + ".join(f"{sign} * COALESCE(l.{name}, 0)" for name, sign in NET_SIGNS.items())
_SUMS = f"""
SELECT s.id AS statement_id, s.net_minor, {_NET} AS lines_net,
       s.line_count, COALESCE(l.n, 0) AS lines
FROM statements s LEFT JOIN (
  SELECT statement_id, COUNT(*) AS n, {", ".join(f"SUM({sql}) AS {name}" for name, sql in _TOTALS)}
  FROM statement_lines GROUP BY statement_id
) l ON l.statement_id = s.id
WHERE s.issued_sha256 IS NOT NULL AND (
  s.line_count <> COALESCE(l.n, 0)
  OR {" OR ".join(f"s.{name} <> COALESCE(l.{name}, 0)" for name, _ in _TOTALS)}
  OR s.net_minor <> {_NET})
"""  # noqa: S608 (built from constants)
_PRICE = PRICE_SQL
_BILLED = ", ".join(f"'{k}'" for k in BILLED_KINDS)


def _line_mismatches(dialect: str) -> str:
    amount = amount_sql(dialect, "l.points", "l.unit_price", "s.currency_exponent")
    return f"""
SELECT l.statement_id, l.transaction_id, l.kind, l.points, l.amount_minor
FROM statement_lines l
JOIN statements s ON s.id = l.statement_id
LEFT JOIN transactions t ON t.id = l.transaction_id
LEFT JOIN rate_cards rc ON rc.id = t.rate_card_id
WHERE l.transaction_id IS NOT NULL AND (
  t.id IS NULL OR rc.id IS NULL OR t.kind <> l.kind OR t.points <> l.points
  OR t.posted_at <> l.posted_at OR t.occurred_at <> l.occurred_at
  OR t.partner_id <> s.partner_id OR l.unit_price <> {_PRICE}
  OR l.amount_minor <> {amount})
"""  # noqa: S608 (built from constants)


# Lines have no foreign keys (the close writes millions at once): each line's statement, and
# each adjustment line's dispute (its partner, amount and resolution time), must exist and agree.
_UNANCHORED_LINES = """
SELECT l.id AS line_id, l.statement_id, l.transaction_id, l.dispute_id, l.kind, l.amount_minor
FROM statement_lines l
LEFT JOIN statements s ON s.id = l.statement_id
LEFT JOIN disputes d ON d.id = l.dispute_id
WHERE s.id IS NULL OR (l.dispute_id IS NOT NULL AND (
  d.id IS NULL OR d.adjustment_minor IS NULL OR d.adjustment_minor <> l.amount_minor
  OR d.partner_id <> s.partner_id OR d.resolved_at <> l.posted_at))
"""


_UNBILLED = f"""
SELECT t.id AS transaction_id, t.kind, t.partner_id, t.posted_at FROM transactions t
WHERE t.partner_id IS NOT NULL AND t.kind IN ({_BILLED}) AND t.posted_at < :before
  AND NOT EXISTS (SELECT 1 FROM statement_lines l WHERE l.transaction_id = t.id)
  AND {{which}}
"""  # noqa: S608 (built from constants)
_UNBILLED_FROM = "EXISTS (SELECT 1 FROM rate_cards rc WHERE rc.id = t.rate_card_id AND {fits})"


def _documents(session: Session) -> list[str]:
    keys = {k.kid: k.public_key for k in public_keys(session)}
    problems: list[str] = []
    statements = session.scalars(
        select(Statement)
        .where(Statement.issued_sha256.is_not(None))
        .order_by(Statement.id.desc())
        .limit(DOCUMENTS_CHECKED)
        .execution_options(yield_per=1)
    )
    for statement in statements:
        if len(problems) >= SAMPLE:
            break
        document = document_of(statement)
        if content_sha256(canonical_json(document)) != statement.content_sha256:
            problems.append(f"document does not hash to its content_sha256: {statement.id}")
            continue
        issued = {**document, "status": "issued"}
        if content_sha256(canonical_json(issued)) != statement.issued_sha256:
            problems.append(f"issued statement changed (issued_sha256): {statement.id}")
            continue
        if document["totals"] != plain(totals_of(statement).document(statement.currency)):
            problems.append(f"document totals != stored totals: {statement.id}")
        elif canonical_value(document["lines"]) != lines_and_totals(session, statement)[0]:
            problems.append(f"document lines != stored lines: {statement.id}")
        elif not (verdict := verify_document(document, keys)).ok:
            problems.append(f"signature: {statement.id}: {verdict.reason}")
    return problems


def _unbilled(session: Session, which: str, before: datetime) -> list[str]:
    query = text(_UNBILLED.format(which=which) + f" LIMIT {SAMPLE}").bindparams(
        bindparam("before", type_=UTCDateTime())
    )
    return [
        ", ".join(f"{k}={v}" for k, v in row._mapping.items())
        for row in session.execute(query, {"before": before})
    ]


def _statements(session: Session) -> list[str]:
    register_sqlite_functions(session)
    dialect = session.get_bind().dialect.name
    sums = sample_rows(session, _SUMS)
    lines = sample_rows(session, _line_mismatches(dialect))
    unanchored = sample_rows(session, _UNANCHORED_LINES)
    latest = last_period(session)
    unbilled: list[str] = []
    too_large: list[str] = []
    if latest is not None:
        fits = _UNBILLED_FROM.format(fits=fits_sql(dialect, "t.points", _PRICE))
        # A billable posting on no statement: a close missed it (before the last period: a
        # late posting may still go on the next), or left it off as too large to bill.
        unbilled = _unbilled(session, fits, latest.start_at)
        too_large = _unbilled(session, f"NOT {fits}", latest.end_at)
    return (
        [f"totals != sums of lines: {r}" for r in sums]
        + [f"line does not match its transaction and rate card: {r}" for r in lines]
        + [f"line without its statement, or not its dispute's adjustment: {r}" for r in unanchored]
        + [f"billable transaction on no statement: {r}" for r in unbilled]
        + [f"transaction too large to bill, left off its statement: {r}" for r in too_large]
        + _documents(session)
    )[: 4 * SAMPLE]


# Invariant 7: a settled statement has its payment (a bank entry, or finance's decision), a
# payment belongs to a settled statement, a bank entry pays at most one statement and only the
# statement it was matched or resolved to.
_UNPAID_SETTLED = """
SELECT s.id AS statement_id, s.payment_reference FROM statements s
WHERE s.status = 'settled'
  AND NOT EXISTS (SELECT 1 FROM statement_payments p WHERE p.statement_id = s.id)
"""
_PAYMENT_OF_UNSETTLED = """
SELECT p.statement_id, p.kind, s.status FROM statement_payments p
LEFT JOIN statements s ON s.id = p.statement_id
WHERE s.id IS NULL OR s.status <> 'settled'
"""
_ENTRY_PAYS_TWICE = """
SELECT p.bank_entry_id, COUNT(*) AS statements FROM statement_payments p
WHERE p.bank_entry_id IS NOT NULL GROUP BY p.bank_entry_id HAVING COUNT(*) > 1
"""
_ENTRY_NOT_ITS_MATCH = """
SELECT p.statement_id, p.bank_entry_id, e.status, e.statement_id AS entry_statement
FROM statement_payments p JOIN bank_entries e ON e.id = p.bank_entry_id
WHERE e.status NOT IN ('matched', 'resolved') OR e.statement_id <> p.statement_id
"""


def _payments(session: Session) -> list[str]:
    return (
        [f"settled statement without a payment: {r}" for r in sample_rows(session, _UNPAID_SETTLED)]
        + [
            f"payment of a statement that is not settled: {r}"
            for r in sample_rows(session, _PAYMENT_OF_UNSETTLED)
        ]
        + [
            f"bank entry pays several statements: {r}"
            for r in sample_rows(session, _ENTRY_PAYS_TWICE)
        ]
        + [
            f"bank entry is not matched to the statement it pays: {r}"
            for r in sample_rows(session, _ENTRY_NOT_ITS_MATCH)
        ]
    )[: 4 * SAMPLE]


SETTLEMENT_CHECKS: list[tuple[int, str, Callable[[Session], list[str]]]] = [
    (
        4,
        "outstanding liability = issued + bonuses - redeemed - expired +/- reversals and "
        "adjustments, at any point in time",
        _liability,
    ),
    (
        5,
        "every closed period: statement totals = sums of lines, lines = ledger and rate cards, "
        "every billable transaction billed once, issued statements unchanged and signed",
        _statements,
    ),
    (
        7,
        "every settled statement is backed by a payment (a matched bank entry, or finance's "
        "recorded decision), and no bank entry settles two statements",
        _payments,
    ),
]


def run_checks(session: Session) -> list[Finding]:
    """Every invariant of docs/invariants.md (1 to 7): the kernel's, the webhooks' (6) and
    settlement's; a finding per invariant."""
    return kernel_checks(session, (*webhook_checks.CHECKS, *SETTLEMENT_CHECKS))
