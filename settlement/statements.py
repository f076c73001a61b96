"""Statement documents: built set-based from the ledger at the close, read back, re-signed on
a status change.

A statement's lines are one ``INSERT ... SELECT`` over the period's postings (never loaded row
by row into Python to compute anything); its totals are one ``GROUP BY`` over those lines; its
cross-brand rows one aggregate over the lot movements of its burns. The only Python pass over
the lines is the one that writes the canonical document, one statement at a time, so the
close's memory is bounded by the largest statement, not by the period.

Line rule: ``amount = points x unit_price`` rounded half-even to the currency's exponent, once
per line (:func:`line_amount_minor`, and the same arithmetic in SQL: PostgreSQL ``NUMERIC``;
on SQLite, whose numbers are floats, the Python function registered on the connection).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import TextClause, bindparam, select, text, update
from sqlalchemy.orm import Session

from coalition import outbox
from coalition.db import UTCDateTime
from coalition.money import format_amount
from coalition.outbox import EventType
from settlement.canonical import b64url, canonical_json, content_sha256, signed_document
from settlement.models import Period, Statement, StatementLine
from settlement.signing import Signer

#: The ledger kinds a statement bills (partner-funded bonuses: ``partner_id`` is set).
BILLED_KINDS = ("earn", "bonus", "earn_reversal", "burn", "burn_reversal")
#: Kinds priced at the issue price; the others (burns, burn reversals) at the reimburse price.
ISSUE_PRICED = ("earn", "bonus", "earn_reversal")
#: Lines read per round trip when the document is written.
LINE_FETCH = 5000


def line_amount_minor(points: int, unit_price: Decimal | str, exponent: int) -> int:
    """A line's amount in minor units: ``points x unit_price``, half-even to ``exponent``."""
    value = (Decimal(points) * Decimal(unit_price)).scaleb(exponent)
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def rfc3339(moment: datetime) -> str:
    """A UTC time as the statement writes it: ``2026-01-05T09:00:00Z`` (microseconds if any)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def price_text(value: Decimal | None) -> str | None:
    """A rate-card price as a plain decimal string without trailing zeros (``"0.0095"``)."""
    if value is None:
        return None
    return format(Decimal(value).normalize(), "f")


def _timed(sql: str, *names: str) -> TextClause:
    return text(sql).bindparams(*(bindparam(n, type_=UTCDateTime()) for n in names))


_PRICE = (
    "CASE WHEN t.kind IN ('burn', 'burn_reversal') THEN rc.reimburse_price_per_point"
    " ELSE rc.issue_price_per_point END"
)
_BILLED = ", ".join(f"'{k}'" for k in BILLED_KINDS)
# The period's billable postings: those posted in [start, end) (none of which can be on a
# statement yet: no period reaches past ``start``), and, when there is a previous period, those
# posted in [lower, start) that are on no statement, where ``lower`` is the previous period's
# start: a transaction posted before the previous cut-off but committed after that close (a
# request in flight at the cut-off) is billed now, once. The two are separate statements so that
# the "on no statement" test (an index probe per row) runs only over the small late window.
_LINE_SOURCE = f"""
SELECT s.id AS statement_id, t.id AS transaction_id, t.kind, t.posted_at, t.occurred_at,
       t.points, {_PRICE} AS unit_price, s.currency_exponent,
       (t.occurred_at < :start OR t.posted_at < :start) AS prior_period
FROM transactions t
JOIN statements s ON s.partner_id = t.partner_id AND s.period_id = :period
JOIN rate_cards rc ON rc.id = t.rate_card_id
WHERE t.posted_at >= :since AND t.posted_at < :until AND t.kind IN ({_BILLED})
  {{late}}
"""  # noqa: S608 (built from constants)
_NOT_BILLED = "AND NOT EXISTS (SELECT 1 FROM statement_lines l WHERE l.transaction_id = t.id)"
_LINE_COLUMNS = (
    "statement_id, transaction_id, kind, posted_at, occurred_at, points, unit_price,"
    " amount_minor, prior_period"
)
# x = points x price in minor units (exact NUMERIC); half-even: a tie goes to the even integer.
_INSERT_LINES_PG = f"""
INSERT INTO statement_lines ({_LINE_COLUMNS})
SELECT statement_id, transaction_id, kind, posted_at, occurred_at, points, unit_price,
       CAST(CASE WHEN x - FLOOR(x) = 0.5 THEN FLOOR(x) + MOD(FLOOR(x), 2) ELSE ROUND(x) END
            AS BIGINT),
       prior_period
FROM (SELECT src.*, src.points * src.unit_price * POWER(10::numeric, src.currency_exponent) AS x
      FROM ({_LINE_SOURCE}) src) priced
"""  # noqa: S608 (built from constants)
_INSERT_LINES_SQLITE = f"""
INSERT INTO statement_lines ({_LINE_COLUMNS})
SELECT statement_id, transaction_id, kind, posted_at, occurred_at, points, unit_price,
       coalition_line_amount(points, unit_price, currency_exponent), prior_period
FROM ({_LINE_SOURCE}) src
"""  # noqa: S608 (built from constants)
# Settlement adjustments of resolved disputes not yet billed: on the partner's next statement.
_INSERT_ADJUSTMENTS = """
INSERT INTO statement_lines (statement_id, dispute_id, kind, posted_at, occurred_at, points,
                             unit_price, amount_minor, prior_period)
SELECT s.id, d.id, 'adjustment', d.resolved_at, d.resolved_at, 0, NULL, d.adjustment_minor,
       (d.resolved_at < :start)
FROM disputes d
JOIN statements s ON s.partner_id = d.partner_id AND s.period_id = :period
WHERE d.adjustment_minor IS NOT NULL AND d.resolved_at < :end
  AND NOT EXISTS (SELECT 1 FROM statement_lines l WHERE l.dispute_id = d.id)
"""
_TOTALS = """
SELECT l.statement_id, l.kind, COUNT(*), COALESCE(SUM(l.points), 0),
       COALESCE(SUM(l.amount_minor), 0)
FROM statement_lines l JOIN statements s ON s.id = l.statement_id
WHERE s.period_id = :period
GROUP BY l.statement_id, l.kind
"""
# Which partner issued the points burned at each partner: the lots its burns consumed (net of
# burn reversals, which put points back into lots); a clawback deficit lot has no origin.
_CROSS_BRAND = """
SELECT s.partner_id, lm.origin_partner_id, SUM(-lm.points)
FROM statement_lines l
JOIN statements s ON s.id = l.statement_id
JOIN lot_movements lm ON lm.transaction_id = l.transaction_id
JOIN lots lo ON lo.id = lm.lot_id
WHERE s.period_id = :period AND l.kind IN ('burn', 'burn_reversal') AND lo.is_deficit = :no
GROUP BY s.partner_id, lm.origin_partner_id
"""


def amount_sql(dialect: str, points: str, price: str, exponent: str) -> str:
    """The line rule as an SQL expression over the given column expressions (the close's
    arithmetic, for ``coalition check`` to recompute each line's amount)."""
    if dialect == "sqlite":
        return f"coalition_line_amount({points}, {price}, {exponent})"
    x = f"(({points}) * ({price}) * POWER(10::numeric, {exponent}))"
    return (
        f"CAST(CASE WHEN {x} - FLOOR({x}) = 0.5 THEN FLOOR({x}) + MOD(FLOOR({x}), 2)"
        f" ELSE ROUND({x}) END AS BIGINT)"
    )


def register_sqlite_functions(session: Session) -> None:
    """Give a SQLite connection the exact line arithmetic (SQLite's numbers are floats)."""
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        return
    raw: Any = connection.connection.driver_connection
    raw.create_function(
        "coalition_line_amount",
        3,
        lambda points, price, exp: line_amount_minor(int(points), str(price), int(exp)),
        deterministic=True,
    )


def insert_lines(session: Session, period: Period, lower: datetime) -> None:
    """Bill the period's postings and pending adjustments on its (already inserted) statements."""
    register_sqlite_functions(session)
    sql = _INSERT_LINES_SQLITE if session.get_bind().dialect.name == "sqlite" else _INSERT_LINES_PG
    params = {"period": period.id, "start": period.start_at, "end": period.end_at}
    current = _timed(sql.replace("{late}", ""), "start", "since", "until")
    session.execute(current, {**params, "since": period.start_at, "until": period.end_at})
    if lower < period.start_at:
        late = _timed(sql.replace("{late}", _NOT_BILLED), "start", "since", "until")
        session.execute(late, {**params, "since": lower, "until": period.start_at})
    session.execute(_timed(_INSERT_ADJUSTMENTS, "start", "end"), params)


@dataclass(slots=True)
class Totals:
    """A statement's totals in minor units and points, summed from its lines."""

    lines: int = 0
    issued_points: int = 0
    issued_minor: int = 0
    earn_reversed_minor: int = 0
    redeemed_points: int = 0
    reimbursed_minor: int = 0
    burn_reversed_minor: int = 0
    adjustments_minor: int = 0

    def add(self, kind: str, count: int, points: int, amount_minor: int) -> None:
        """Add one kind's lines."""
        self.lines += count
        if kind in ("earn", "bonus"):
            self.issued_points += points
            self.issued_minor += amount_minor
        elif kind == "earn_reversal":
            self.earn_reversed_minor += amount_minor
        elif kind == "burn":
            self.redeemed_points += points
            self.reimbursed_minor += amount_minor
        elif kind == "burn_reversal":
            self.burn_reversed_minor += amount_minor
        else:
            assert kind == "adjustment", kind
            self.adjustments_minor += amount_minor

    @property
    def net_minor(self) -> int:
        """What the operator pays the partner (negative: the partner pays)."""
        return (
            self.reimbursed_minor
            - self.issued_minor
            + self.earn_reversed_minor
            - self.burn_reversed_minor
            + self.adjustments_minor
        )

    @property
    def direction(self) -> str:
        """``operator_pays``, ``partner_pays`` or ``none``."""
        net = self.net_minor
        return "operator_pays" if net > 0 else "partner_pays" if net < 0 else "none"

    def document(self, currency: str) -> dict[str, Any]:
        """The ``totals`` object of the document."""
        return {
            "issued_points": self.issued_points,
            "issued_amount": format_amount(self.issued_minor, currency),
            "earn_reversed_amount": format_amount(self.earn_reversed_minor, currency),
            "redeemed_points": self.redeemed_points,
            "reimbursed_amount": format_amount(self.reimbursed_minor, currency),
            "burn_reversed_amount": format_amount(self.burn_reversed_minor, currency),
            "adjustments_amount": format_amount(self.adjustments_minor, currency),
            "net_amount": format_amount(self.net_minor, currency),
            "direction": self.direction,
        }


def totals_of(statement: Statement) -> Totals:
    """An issued statement's totals, from its stored columns."""
    return Totals(
        lines=statement.line_count,
        issued_points=statement.issued_points,
        issued_minor=statement.issued_minor,
        earn_reversed_minor=statement.earn_reversed_minor,
        redeemed_points=statement.redeemed_points,
        reimbursed_minor=statement.reimbursed_minor,
        burn_reversed_minor=statement.burn_reversed_minor,
        adjustments_minor=statement.adjustments_minor,
    )


def period_totals(session: Session, period_id: str) -> dict[str, Totals]:
    """Totals of each statement of the period that has lines (one ``GROUP BY``)."""
    totals: dict[str, Totals] = {}
    for statement_id, kind, count, points, amount in session.execute(
        text(_TOTALS), {"period": period_id}
    ):
        totals.setdefault(statement_id, Totals()).add(kind, int(count), int(points), int(amount))
    return totals


def cross_brand_rows(session: Session, period_id: str) -> list[tuple[str, str | None, int]]:
    """(partner where burned, origin partner or ``None`` for the coalition, points) of a
    closed period; rows with zero points left out."""
    rows = session.execute(text(_CROSS_BRAND), {"period": period_id, "no": False}).all()
    return [(p, o, int(n)) for p, o, n in rows if int(n) != 0]


def _cross_brand_document(rows: Sequence[tuple[str | None, int]]) -> list[dict[str, Any]]:
    ordered = sorted(rows, key=lambda r: (r[0] is None, r[0] or ""))
    return [{"origin_partner_id": origin, "points": points} for origin, points in ordered]


def _amount_writer(exponent: int) -> Callable[[int], str]:
    """:func:`coalition.money.format_amount` for one exponent, in integer arithmetic."""
    if exponent == 0:
        return str
    scale = 10**exponent

    def write(minor: int) -> str:
        whole, fraction = divmod(abs(minor), scale)
        return f"{'-' if minor < 0 else ''}{whole}.{fraction:0{exponent}d}"

    return write


def lines_of(session: Session, statement: Statement) -> Iterator[dict[str, Any]]:
    """The statement's lines as its document writes them, in order, fetched in batches."""
    result = session.execute(
        select(
            StatementLine.transaction_id,
            StatementLine.dispute_id,
            StatementLine.kind,
            StatementLine.posted_at,
            StatementLine.occurred_at,
            StatementLine.points,
            StatementLine.unit_price,
            StatementLine.amount_minor,
            StatementLine.prior_period,
        )
        .where(StatementLine.statement_id == statement.id)
        .order_by(StatementLine.posted_at, StatementLine.id),
        execution_options={"yield_per": LINE_FETCH},
    )
    # A statement has few distinct prices: each is written once (the hot loop of the close).
    prices: dict[Decimal | None, str | None] = {}
    amount_text = _amount_writer(statement.currency_exponent)
    for txn, dispute, kind, posted, occurred, points, price, amount, prior in result:
        written = prices.get(price)
        if written is None:
            written = prices[price] = price_text(price)
        line: dict[str, Any] = {
            "transaction_id": txn,
            "kind": kind,
            "posted_at": rfc3339(posted),
            "occurred_at": rfc3339(occurred),
            "points": int(points),
            "unit_price": written,
            "amount": amount_text(int(amount)),
            "prior_period": bool(prior),
        }
        if kind == "adjustment":
            line["dispute_id"] = dispute
        yield line


def build_document(
    session: Session,
    statement: Statement,
    period: Period,
    totals: Totals,
    cross_brand: Sequence[tuple[str | None, int]],
) -> dict[str, Any]:
    """The statement's document (status ``issued``), without content hash and signature."""
    lines = list(lines_of(session, statement))
    assert len(lines) == totals.lines, (statement.id, len(lines), totals.lines)
    return {
        "id": statement.id,
        "partner_id": statement.partner_id,
        "period": period_ref(period),
        "currency": statement.currency,
        "status": "issued",
        "lines": lines,
        "totals": totals.document(statement.currency),
        "cross_brand": _cross_brand_document(cross_brand),
    }


def issue(
    session: Session,
    statement: Statement,
    document: dict[str, Any],
    totals: Totals,
    signer: Signer,
) -> None:
    """Write the statement's totals, its issued hash and its signed document (once)."""
    canonical = canonical_json(document)
    digest = content_sha256(canonical)
    signature = b64url(signer.sign(canonical))
    session.execute(
        update(Statement)
        .where(Statement.id == statement.id, Statement.issued_sha256.is_(None))
        .values(
            line_count=totals.lines,
            issued_points=totals.issued_points,
            issued_minor=totals.issued_minor,
            earn_reversed_minor=totals.earn_reversed_minor,
            redeemed_points=totals.redeemed_points,
            reimbursed_minor=totals.reimbursed_minor,
            burn_reversed_minor=totals.burn_reversed_minor,
            adjustments_minor=totals.adjustments_minor,
            net_minor=totals.net_minor,
            direction=totals.direction,
            issued_sha256=digest,
            document=canonical.decode("utf-8"),
            content_sha256=digest,
            signing_kid=signer.kid,
            signature=signature,
        )
        .execution_options(synchronize_session=False)
    )
    announce(session, statement, EventType.STATEMENT_ISSUED, at=statement.issued_at)


def period_ref(period: Period) -> dict[str, str]:
    """A period as a statement names it."""
    return {"id": period.id, "start": rfc3339(period.start_at), "end": rfc3339(period.end_at)}


def summary_data(statement: Statement, period: Period) -> dict[str, Any]:
    """An issued statement without its lines, from its columns (its document is not read): the
    API's ``StatementSummary`` and the data of its webhook events."""
    assert statement.issued_sha256 is not None and statement.period_id == period.id
    return {
        "id": statement.id,
        "partner_id": statement.partner_id,
        "period": period_ref(period),
        "currency": statement.currency,
        "status": statement.status,
        "lines": statement.line_count,
        "totals": totals_of(statement).document(statement.currency),
        "issued_at": statement.issued_at,
        "content_sha256": statement.content_sha256 or "",
        "issued_sha256": statement.issued_sha256,
        "payment_reference": statement.payment_reference,
        "paid_at": statement.paid_at,
    }


def announce(session: Session, statement: Statement, event_type: EventType, at: datetime) -> None:
    """Note the statement's webhook event (``statement.issued``, ``statement.settled``) for
    its partner, with the statement as it stands now."""
    session.refresh(statement)
    period = session.get_one(Period, statement.period_id)
    outbox.note(session, event_type, statement.partner_id, summary_data(statement, period), at=at)


def resign(session: Session, statement: Statement, status: str, signer: Signer) -> None:
    """Move the statement to ``status``: the same lines and totals, a new signed document."""
    assert statement.document is not None
    document = json.loads(statement.document)
    document["status"] = status
    canonical = canonical_json(document)
    signed = signed_document(document, signer.kid, signer.sign(canonical))
    session.execute(
        update(Statement)
        .where(Statement.id == statement.id)
        .values(
            status=status,
            document=canonical.decode("utf-8"),
            content_sha256=signed["content_sha256"],
            signing_kid=signer.kid,
            signature=signed["signature"]["value"],
        )
        .execution_options(synchronize_session=False)
    )
    session.refresh(statement)


def document_of(statement: Statement) -> dict[str, Any]:
    """The statement's signed document, exactly as signed."""
    assert statement.document is not None and statement.signing_kid is not None
    document: dict[str, Any] = json.loads(statement.document)
    document["content_sha256"] = statement.content_sha256
    document["signature"] = {
        "alg": "ed25519",
        "kid": statement.signing_kid,
        "value": statement.signature,
    }
    return document
