"""A period's statement lines in SQL: written set-based at the close from the ledger's
transfers (one ``INSERT ... SELECT``, never loaded row by row into Python), read back per
statement as the canonical JSON text its document carries (one aggregate that also sums the
statement's totals), and the cross-brand rows of a period (one aggregate over its burns' lot
movements). :mod:`settlement.statements` builds, signs and stores the documents from these.

A posting the ledger cannot bill (more than :data:`~coalition.money.MAX_POINTS` points, or
worth more than :data:`~coalition.money.MAX_AMOUNT`: refused at input, but older data may hold
one) is left off its statement and reported (:func:`unbillable`), so one bad row never blocks a
close.

Line rule: ``amount = points x unit_price`` rounded half-even to the currency's exponent, once
per line (:func:`line_amount_minor`, and the same arithmetic in SQL: PostgreSQL ``NUMERIC``;
on SQLite, whose numbers are floats, the Python function registered on the connection).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.orm import Session

from coalition.db import UTCDateTime
from coalition.ledger.kinds import BILLED_KINDS, KINDS, sql_case, sql_price
from coalition.money import MAX_AMOUNT, MAX_POINTS, format_amount, line_fits
from settlement.canonical import (
    canonical_value,
)
from settlement.document import StatementTotals
from settlement.models import DISPUTE_LINE, Period, Statement

#: The sign of each amount total in the net (what the operator pays the partner).
NET_SIGNS = {k.amount_total: k.net_sign for k in KINDS.values() if k.amount_total} | {
    "adjustments_minor": 1
}


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

    @property
    def net_minor(self) -> int:
        """What the operator pays the partner (negative: the partner pays): each amount total
        with its kinds' sign (``coalition.ledger.kinds``)."""
        return sum(sign * getattr(self, name) for name, sign in NET_SIGNS.items())

    @property
    def direction(self) -> str:
        """``operator_pays``, ``partner_pays`` or ``none``."""
        net = self.net_minor
        return "operator_pays" if net > 0 else "partner_pays" if net < 0 else "none"

    def document(self, currency: str) -> StatementTotals:
        """The ``totals`` of the document."""
        return StatementTotals(
            issued_points=self.issued_points,
            issued_amount=format_amount(self.issued_minor, currency),
            earn_reversed_amount=format_amount(self.earn_reversed_minor, currency),
            redeemed_points=self.redeemed_points,
            reimbursed_amount=format_amount(self.reimbursed_minor, currency),
            burn_reversed_amount=format_amount(self.burn_reversed_minor, currency),
            adjustments_amount=format_amount(self.adjustments_minor, currency),
            net_amount=format_amount(self.net_minor, currency),
            direction=self.direction,  # type: ignore[arg-type]
        )


def _totals_of_lines() -> dict[str, tuple[str, list[str]]]:
    """Each statement total (:class:`Totals`' fields after ``lines``): the line column it
    sums and the line kinds that add to it."""
    totals: dict[str, tuple[str, list[str]]] = {}
    for name, k in KINDS.items():
        for total, column in ((k.points_total, "points"), (k.amount_total, "amount_minor")):
            if total is not None:
                totals.setdefault(total, (column, []))[1].append(name)
    totals["adjustments_minor"] = ("amount_minor", [DISPUTE_LINE])
    return totals


def total_sums(prefix: str) -> list[tuple[str, str]]:
    """Each statement total as ``(field, SQL over a line's columns)`` (``prefix``: the line
    table's alias and a dot), in :class:`Totals`' order."""
    totals = _totals_of_lines()
    order = [f.name for f in fields(Totals)][1:]
    return [
        (name, sql_case(f"{prefix}kind", totals[name][1], f"{prefix}{totals[name][0]}"))
        for name in order
    ]


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


#: The rate-card price of a transaction ``t`` of rate card ``rc``, by its kind.
PRICE_SQL = sql_price("t.kind", "rc.issue_price_per_point", "rc.reimburse_price_per_point")
_BILLED = ", ".join(f"'{k}'" for k in BILLED_KINDS)
_LINE_COLUMNS = (
    "statement_id, transaction_id, dispute_id, kind, posted_at, occurred_at, points, unit_price,"
    " amount_minor, prior_period"
)
# The period's billable postings: those posted in [start, end) (none of which can be on a
# statement yet: no period reaches past ``start``), and, when there is a previous period, those
# posted in [lower, start) that are on no statement, where ``lower`` is the previous period's
# start: a transaction posted before the previous cut-off but committed after that close (a
# request in flight at the cut-off) is billed now, once. The two are separate branches so that
# the "on no statement" test (an index probe per row) runs only over the small late window.
# Each row carries its statement's number in the period (``n``, in statement id order), the one
# key the lines are sorted by: a sort of a million lines is mostly comparisons, and one integer
# is many times cheaper to compare than the statement's id (a string, in the database's
# collation) followed by the posting time (read out of each tuple on every tie).
_STATEMENTS = """(SELECT id, partner_id, currency_exponent, row_number() OVER (ORDER BY id) AS n
  FROM statements WHERE period_id = :period)"""
_POSTINGS = f"""
SELECT s.n, s.id AS statement_id, t.id AS transaction_id, NULL AS dispute_id, t.kind,
       t.posted_at, t.occurred_at, t.points, {{price}} AS unit_price, {{amount}} AS amount_minor,
       (t.occurred_at < :start OR t.posted_at < :start) AS prior_period
FROM transactions t
JOIN {_STATEMENTS} s ON s.partner_id = t.partner_id
JOIN rate_cards rc ON rc.id = t.rate_card_id
WHERE t.posted_at >= {{since}} AND t.posted_at < {{until}} AND t.kind IN ({{billed}}) {{late}}
  AND {{fits}}
"""  # noqa: S608 (built from constants)
_NOT_BILLED = "AND NOT EXISTS (SELECT 1 FROM statement_lines l WHERE l.transaction_id = t.id)"
# Settlement adjustments of resolved disputes not yet billed: on the partner's next statement.
_ADJUSTMENTS = f"""
SELECT s.n, s.id, NULL, d.id, '{DISPUTE_LINE}', d.resolved_at, d.resolved_at, 0, NULL,
       d.adjustment_minor, (d.resolved_at < :start)
FROM disputes d
JOIN {_STATEMENTS} s ON s.partner_id = d.partner_id
WHERE d.adjustment_minor IS NOT NULL AND d.resolved_at < :end
  AND NOT EXISTS (SELECT 1 FROM statement_lines l WHERE l.dispute_id = d.id)
"""  # noqa: S608 (built from constants)
# Which partner issued the points burned at each partner: the lots its burns consumed (net of
# burn reversals, which put points back into lots); a clawback deficit lot has no origin.
_CROSS_BRAND = """
SELECT s.partner_id, lm.origin_partner_id, SUM(-lm.points)
FROM statements s
JOIN statement_lines l
  ON l.id BETWEEN s.first_line_id AND s.last_line_id AND l.statement_id = s.id
JOIN lot_movements lm ON lm.transaction_id = l.transaction_id
JOIN lots lo ON lo.id = lm.lot_id
WHERE s.period_id = :period AND l.kind IN ('burn', 'burn_reversal') AND lo.is_deficit = :no
GROUP BY s.partner_id, lm.origin_partner_id
"""


def amount_sql(dialect: str, points: str, price: str, exponent: str) -> str:
    """The line rule as an SQL expression over the given column expressions (the close's
    arithmetic, and ``coalition check``'s to recompute each line's amount)."""
    if dialect == "sqlite":
        return f"coalition_line_amount({points}, {price}, {exponent})"
    x = f"(({points}) * ({price}) * POWER(10::numeric, {exponent}))"
    return (
        f"CAST(CASE WHEN {x} - FLOOR({x}) = 0.5 THEN FLOOR({x}) + MOD(FLOOR({x}), 2)"
        f" ELSE ROUND({x}) END AS BIGINT)"
    )


def fits_sql(dialect: str, points: str, price: str) -> str:
    """:func:`~coalition.money.line_fits` as an SQL condition (evaluated before any line's
    amount is, so a row too large to bill never reaches the ``BIGINT`` cast)."""
    if dialect == "sqlite":
        return f"coalition_line_fits({points}, {price}) = 1"
    return f"(({points}) <= {MAX_POINTS} AND ({points}) * ({price}) <= {MAX_AMOUNT})"


_UNBILLABLE = f"""
SELECT t.id AS transaction_id, t.partner_id, t.kind, t.points, {PRICE_SQL} AS unit_price
FROM transactions t
JOIN statements s ON s.partner_id = t.partner_id AND s.period_id = :period
JOIN rate_cards rc ON rc.id = t.rate_card_id
WHERE t.posted_at >= :lower AND t.posted_at < :end AND t.kind IN ({_BILLED})
  AND t.points > :least AND NOT ({{fits}})
  AND NOT EXISTS (SELECT 1 FROM statement_lines l WHERE l.transaction_id = t.id)
ORDER BY t.posted_at, t.id
"""  # noqa: S608 (built from constants)


@dataclass(frozen=True, slots=True)
class Unbillable:
    """A posting of the period left off its statement: too large for the ledger to bill."""

    transaction_id: str
    partner_id: str
    kind: str
    points: int
    unit_price: Decimal

    @property
    def reason(self) -> str:
        """Why, in words."""
        return (
            f"{self.points} points at {price_text(self.unit_price)} per point: more than "
            f"{MAX_POINTS} points or worth more than {MAX_AMOUNT} in one line"
        )


def unbillable(session: Session, period: Period, lower: datetime) -> list[Unbillable]:
    """The postings of ``period`` (and of the late window from ``lower``) that its close left
    off: on no statement because they are too large to bill (:func:`fits_sql`)."""
    register_sqlite_functions(session)
    dialect = session.get_bind().dialect.name
    # The fewest points any rate card's prices make too much: rows with as many or fewer fit,
    # and are passed over by one integer comparison (this runs after every close).
    prices = session.execute(
        text("SELECT issue_price_per_point, reimburse_price_per_point FROM rate_cards")
    ).all()
    top = max((Decimal(p) for row in prices for p in row), default=Decimal(0))
    least = MAX_POINTS if top <= 0 else min(MAX_POINTS, int(MAX_AMOUNT / top))
    sql = _timed(_UNBILLABLE.format(fits=fits_sql(dialect, "t.points", PRICE_SQL)), "lower", "end")
    params = {"period": period.id, "lower": lower, "end": period.end_at, "least": least}
    rows = session.execute(sql, params)
    return [
        Unbillable(r.transaction_id, r.partner_id, r.kind, int(r.points), Decimal(r.unit_price))
        for r in rows
    ]


def _insert_lines_sql(dialect: str, *, late: bool) -> TextClause:
    """One ``INSERT ... SELECT`` of every line of the period, grouped by statement: each
    statement's lines are then neighbours on disk and their ids one short range, read back
    through the primary key; their document order is ``(posted_at, id)``."""
    amount = amount_sql(dialect, "t.points", PRICE_SQL, "s.currency_exponent")
    fits = fits_sql(dialect, "t.points", PRICE_SQL)
    branches = [
        _POSTINGS.format(
            price=PRICE_SQL,
            amount=amount,
            since=":start",
            until=":end",
            billed=_BILLED,
            late="",
            fits=fits,
        )
    ]
    if late:
        branches.append(
            _POSTINGS.format(
                price=PRICE_SQL,
                amount=amount,
                since=":lower",
                until=":start",
                billed=_BILLED,
                late=_NOT_BILLED,
                fits=fits,
            )
        )
    branches.append(_ADJUSTMENTS)
    sql = (
        f"INSERT INTO statement_lines ({_LINE_COLUMNS}) SELECT {_LINE_COLUMNS} FROM ("  # noqa: S608 (built from constants)
        + " UNION ALL ".join(branches)
        + ") lines ORDER BY n"
    )
    if dialect == "postgresql":
        # The same statement gives each statement the id range of the lines it just wrote.
        sql = _WRITTEN_RANGES.format(insert=sql)
    return _timed(sql, "start", "end", *(("lower",) if late else ()))


def _canonical_time_pg(column: str) -> str:
    """:func:`rfc3339` in SQL (microseconds only when there are any)."""
    return (
        f"""replace(to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),"""
        " '.000000Z', 'Z')"
    )


# A line's canonical JSON (keys sorted, no whitespace), exactly what :meth:`Line.canonical` writes;
# ``:minor_unit`` is the value of one minor unit of the statement's currency as a decimal with
# exactly its exponent's decimals (``0.01``, ``0.001``, ``1``): the exact product of a ``NUMERIC``
# with it writes exactly that many decimals (none for ``1``), the sign in front.
_LINE_JSON_PG = (
    """'{"amount":"' || (l.amount_minor * CAST(:minor_unit AS NUMERIC))::text"""
    """ || '",' || CASE WHEN l.kind = '""" + DISPUTE_LINE + """' THEN '"dispute_id":'"""
    """ || to_json(l.dispute_id)::text || ',' ELSE '' END"""
    """ || '"kind":"' || l.kind || '","occurred_at":"' || """
    + _canonical_time_pg("l.occurred_at")
    + """ || '","points":' || l.points::text || ',"posted_at":"' || """
    + _canonical_time_pg("l.posted_at")
    + """ || '","prior_period":' || CASE WHEN l.prior_period THEN 'true' ELSE 'false' END"""
    """ || ',"transaction_id":' || COALESCE(to_json(l.transaction_id)::text, 'null')"""
    """ || ',"unit_price":' || COALESCE('"' || trim_scale(l.unit_price)::text || '"', 'null')"""
    """ || '}'"""
)
# A statement's totals, summed in the same pass over its lines (Totals' fields, in order).
_SUMS = ",\n  ".join(["COUNT(*)", *(f"SUM({sql})" for _, sql in total_sums("l."))])
# A statement's lines: the range of their ids, read through the primary key.
_OF_STATEMENT = "l.id BETWEEN :first AND :last AND l.statement_id = :statement"
# The statement's lines as one canonical JSON array in document order (posted, then line id),
# and its totals.
_LINES_PG = f"""
SELECT '[' || COALESCE(string_agg({_LINE_JSON_PG}, ',' ORDER BY l.posted_at, l.id), '') || ']',
  {_SUMS}
FROM statement_lines l WHERE {_OF_STATEMENT}
"""  # noqa: S608 (built from constants)
# SQLite (no ordered aggregates before 3.44): the aggregate reads an ordered subquery, which
# SQLite does not flatten into an aggregate, so it keeps the order.
_LINES_SQLITE = f"""
SELECT '[' || COALESCE(group_concat(l.line, ','), '') || ']', {_SUMS} FROM (
  SELECT coalition_line_json(l.transaction_id, l.dispute_id, l.kind, l.posted_at, l.occurred_at,
                             l.points, l.unit_price, l.amount_minor, l.prior_period, :exponent)
         AS line, l.kind, l.points, l.amount_minor
  FROM statement_lines l WHERE {_OF_STATEMENT} ORDER BY l.posted_at, l.id) l
"""  # noqa: S608 (built from constants)


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a statement as stored (the reference for the SQL that writes lines)."""

    transaction_id: str | None
    dispute_id: str | None
    kind: str
    posted_at: datetime
    occurred_at: datetime
    points: int
    unit_price: Decimal | None
    amount_minor: int
    prior_period: bool

    def canonical(self, exponent: int) -> bytes:
        """The line as its document writes it, in canonical JSON."""
        line: dict[str, Any] = {
            "transaction_id": self.transaction_id,
            "kind": self.kind,
            "posted_at": rfc3339(self.posted_at),
            "occurred_at": rfc3339(self.occurred_at),
            "points": self.points,
            "unit_price": price_text(self.unit_price),
            "amount": amount_writer(exponent)(self.amount_minor),
            "prior_period": self.prior_period,
        }
        if self.kind == "adjustment":
            line["dispute_id"] = self.dispute_id
        return canonical_value(line)


def _sqlite_line_json(*row: Any) -> str:
    txn, dispute, kind, posted, occurred, points, price, amount, prior, exponent = row
    line = Line(
        txn,
        dispute,
        kind,
        datetime.fromisoformat(posted).replace(tzinfo=UTC),
        datetime.fromisoformat(occurred).replace(tzinfo=UTC),
        int(points),
        None if price is None else Decimal(price),
        int(amount),
        bool(prior),
    )
    return line.canonical(int(exponent)).decode("utf-8")


def register_sqlite_functions(session: Session) -> None:
    """Give a SQLite connection the exact line arithmetic (SQLite's numbers are floats) and the
    line's canonical JSON."""
    connection = session.connection()
    pooled = connection.connection
    # Once per database connection: SQLite refuses to redefine a function while a statement
    # of the connection is running (a check reading statements while it reads their lines).
    if connection.dialect.name != "sqlite" or pooled.info.get("coalition_functions"):
        return
    pooled.info["coalition_functions"] = True
    raw: Any = pooled.driver_connection
    raw.create_function(
        "coalition_line_amount",
        3,
        lambda points, price, exp: line_amount_minor(int(points), str(price), int(exp)),
        deterministic=True,
    )
    raw.create_function("coalition_line_json", 10, _sqlite_line_json, deterministic=True)
    raw.create_function(
        "coalition_line_fits",
        2,
        lambda points, price: int(line_fits(int(points), str(price))),
        deterministic=True,
    )


#: The ``work_mem`` the lines' ``INSERT`` runs with at least (docs/operations.md).
SORT_WORK_MEM = "256MB"
_SORT_IN_MEMORY = """
SELECT current_setting('work_mem') AS work_mem, current_setting('jit') AS jit,
  set_config('work_mem', CASE WHEN pg_size_bytes(current_setting('work_mem'))
    < pg_size_bytes(:work_mem) THEN :work_mem ELSE current_setting('work_mem') END, true),
  set_config('jit', 'off', true)
"""
_RESTORE = "SELECT set_config('work_mem', :work_mem, true), set_config('jit', :jit, true)"
# Each statement of the period gets the id range of the lines just written (none: no range):
# on PostgreSQL from the rows the INSERT returns; on SQLite (one writer at a time, no INSERT in
# a WITH) from the lines with an id above the largest before the INSERT.
_WRITTEN_RANGES = """
WITH written AS ({insert} RETURNING statement_id, id)
UPDATE statements SET first_line_id = r.lo, last_line_id = r.hi
FROM (SELECT statement_id, MIN(id) AS lo, MAX(id) AS hi FROM written GROUP BY statement_id) r
WHERE statements.id = r.statement_id
"""
_LINE_RANGES = """
UPDATE statements SET first_line_id = r.lo, last_line_id = r.hi
FROM (SELECT statement_id, MIN(id) AS lo, MAX(id) AS hi FROM statement_lines
      WHERE id > :after GROUP BY statement_id) r
WHERE statements.id = r.statement_id AND statements.period_id = :period
"""


def insert_lines(session: Session, period: Period, lower: datetime) -> None:
    """Bill the period's postings and pending adjustments on its (already inserted) statements."""
    register_sqlite_functions(session)
    dialect = session.get_bind().dialect.name
    params = {"period": period.id, "start": period.start_at, "end": period.end_at, "lower": lower}
    insert = _insert_lines_sql(dialect, late=lower < period.start_at)
    if dialect != "postgresql":
        params["after"] = session.scalar(text("SELECT COALESCE(MAX(id), 0) FROM statement_lines"))
        session.execute(insert, params)
        session.execute(text(_LINE_RANGES), params)
        return
    # The period's statements were inserted a moment ago: without fresh statistics the planner
    # takes them for one row and reads the postings once per partner (by index, all over the
    # table) instead of once, joined with them by hash.
    session.execute(text("ANALYZE statements"))
    # For this statement only: room to sort the lines in memory (a million take about 180 MB;
    # the default 4 MB sorts them on disk), and no JIT compilation (half a second spent
    # compiling expressions that are mostly numeric and text function calls it cannot speed).
    prior = session.execute(text(_SORT_IN_MEMORY), {"work_mem": SORT_WORK_MEM}).one()
    session.execute(insert, params)
    session.execute(text(_RESTORE), {"work_mem": prior.work_mem, "jit": prior.jit})


def _minor_unit(exponent: int) -> str:
    """One minor unit as a decimal with ``exponent`` decimals: ``0.01`` for 2, ``1`` for 0."""
    return "1" if exponent == 0 else f"0.{'0' * (exponent - 1)}1"


def lines_and_totals(session: Session, statement: Statement) -> tuple[bytes, Totals]:
    """The statement's lines as its document writes them (canonical JSON, built by the database
    in one aggregate: Python only receives the text) and their totals."""
    register_sqlite_functions(session)
    sql = _LINES_SQLITE if session.get_bind().dialect.name == "sqlite" else _LINES_PG
    params = {
        "statement": statement.id,
        "first": statement.first_line_id,
        "last": statement.last_line_id,
        "exponent": statement.currency_exponent,
        "minor_unit": _minor_unit(statement.currency_exponent),
    }
    written, *sums = session.execute(text(sql), params).one()
    return str(written).encode("utf-8"), Totals(*(int(n or 0) for n in sums))


def cross_brand_rows(session: Session, period_id: str) -> list[tuple[str, str | None, int]]:
    """(partner where burned, origin partner or ``None`` for the coalition, points) of a
    closed period; rows with zero points left out."""
    rows = session.execute(text(_CROSS_BRAND), {"period": period_id, "no": False}).all()
    return [(p, o, int(n)) for p, o, n in rows if int(n) != 0]


def amount_writer(exponent: int) -> Callable[[int], str]:
    """:func:`coalition.money.format_amount` for one exponent, in integer arithmetic."""
    if exponent == 0:
        return str
    scale = 10**exponent

    def write(minor: int) -> str:
        whole, fraction = divmod(abs(minor), scale)
        return f"{'-' if minor < 0 else ''}{whole}.{fraction:0{exponent}d}"

    return write
