"""The ledger's invariants 1 to 3 (docs/invariants.md) as checks that ``coalition check`` runs
(:data:`LEDGER_CHECKS`, through ``coalition.check``): each one SQL aggregate over the whole
ledger (a full audit, not a hot-path query) reporting at most :data:`SAMPLE` offending rows,
so a report stays readable at any size."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.orm import Session

from coalition.db import dialect_of
from coalition.ledger.kinds import TIER_SIGNS, sql_in, sql_roles, sql_tier_points

SAMPLE = 10


def sample_rows(session: Session, sql: str, **params: object) -> list[str]:
    """At most :data:`SAMPLE` rows of ``sql``, each as ``name=value, ...``."""
    result = session.execute(text(sql + f" LIMIT {SAMPLE}"), params)
    return [", ".join(f"{k}={v}" for k, v in row._mapping.items()) for row in result]


# Invariant 1: every transfer moves positive points between two different accounts (the
# schema's checks, verified again), both of which exist and have the roles its kind declares
# (``coalition.ledger.kinds``), one of them its member's own (the two columns have no foreign
# key: a partner's account is a hot parent row, docs/invariants.md).
_MISDIRECTED = f"""
SELECT t.id AS transaction_id, t.kind, t.points, da.kind AS debit, ca.kind AS credit
FROM transactions t
LEFT JOIN accounts da ON da.id = t.debit_account_id
LEFT JOIN accounts ca ON ca.id = t.credit_account_id
LEFT JOIN members m ON m.id = t.member_id
WHERE t.points <= 0 OR t.debit_account_id = t.credit_account_id OR da.id IS NULL
  OR ca.id IS NULL OR m.id IS NULL
  OR (m.account_id <> t.debit_account_id AND m.account_id <> t.credit_account_id)
  OR NOT {sql_roles("t.kind", "t.partner_id", "da.kind", "ca.kind")}
"""  # noqa: S608 (built from constants)
# Each member account's balance (the one balance kept in a row) = its credits less its debits.
_MEMBER_TRANSFERS = """
SELECT m.id AS member_id, m.balance, COALESCE(c.total, 0) - COALESCE(d.total, 0) AS transfers
FROM members m
LEFT JOIN (SELECT credit_account_id AS account_id, SUM(points) AS total FROM transactions
           GROUP BY credit_account_id) c ON c.account_id = m.account_id
LEFT JOIN (SELECT debit_account_id AS account_id, SUM(points) AS total FROM transactions
           GROUP BY debit_account_id) d ON d.account_id = m.account_id
WHERE m.balance <> COALESCE(c.total, 0) - COALESCE(d.total, 0)
"""


# The references to hot parents that have no foreign key (a key takes a row lock on the
# parent per insert: the partner's and its rate card's rows, shared by every write of a
# partner; docs/invariants.md, "Foreign keys"): each names a row that exists.
_DANGLING = " UNION ALL ".join(
    f"SELECT '{table}.{column}' AS reference, CAST(c.{key} AS VARCHAR(40)) AS row_id,"  # noqa: S608 (constants)
    f" c.{column} AS missing FROM {table} c LEFT JOIN {parent} p ON p.id = c.{column}"
    f" WHERE c.{column} IS NOT NULL AND p.id IS NULL"
    for table, key, column, parent in (
        ("transactions", "id", "partner_id", "partners"),
        ("transactions", "id", "rate_card_id", "rate_cards"),
        ("lots", "id", "origin_partner_id", "partners"),
        ("lot_movements", "id", "origin_partner_id", "partners"),
        ("holds", "id", "partner_id", "partners"),
    )
)


def transfers(session: Session) -> list[str]:
    """Invariant 1, as findings."""
    misdirected = sample_rows(session, _MISDIRECTED)
    unbalanced = sample_rows(session, _MEMBER_TRANSFERS)
    dangling = sample_rows(session, _DANGLING)
    return (
        [f"transfer not between its kind's accounts: {r}" for r in misdirected]
        + [f"member balance != its credits less its debits: {r}" for r in unbalanced]
        + [f"reference to no row: {r}" for r in dangling]
    )


# Only an earn reversal (a clawback) takes a member's available points below zero, and it
# records by how much; burns and holds never do, captures and voids only raise available. So a
# member can never be further below zero than its recorded clawbacks add up to.
_NEGATIVE_BEYOND_CLAWBACKS = """
SELECT m.id AS member_id, m.balance FROM members m WHERE m.balance < 0 AND -m.balance >
  (SELECT COALESCE(SUM(t.overdraft_points), 0) FROM transactions t
   WHERE t.member_id = m.id AND t.overdraft_points > 0)
"""
_HELD_BEYOND_CLAWBACKS = """
SELECT m.id AS member_id, m.balance, m.held FROM members m
WHERE m.held < 0 OR (m.held > m.balance AND m.held - m.balance >
  (SELECT COALESCE(SUM(t.overdraft_points), 0) FROM transactions t
   WHERE t.member_id = m.id AND t.overdraft_points > 0))
"""


#: The UTC day (days since 1970-01-01) a transaction occurred on, as ``ledger.day_of`` computes
#: it, per dialect (SQLite stores naive UTC text).
_DAY_OF = {
    "postgresql": "CAST(FLOOR(EXTRACT(EPOCH FROM t.occurred_at) / 86400) AS INTEGER)",
    "sqlite": "CAST(strftime('%s', t.occurred_at) AS INTEGER) / 86400",
}


def _tier_basis(session: Session) -> list[str]:
    """Each member row's tier basis (kept by the write path, ``coalition.ledger.tiers``) = a
    recomputation from its transactions: ``tier_day`` the day of its latest earn or earn
    reversal, ``tier_points`` their points from ``tier_since_day`` to ``tier_day``."""
    day = _DAY_OF[dialect_of(session)]
    counts = sql_in("t.kind", list(TIER_SIGNS))
    return sample_rows(
        session,
        "SELECT m.id AS member_id, m.tier_day, l.day AS latest_day, m.tier_since_day,"  # noqa: S608 (built from constants)
        " m.tier_points AS kept, COALESCE(w.points, 0) AS recomputed FROM members m"
        f" LEFT JOIN (SELECT t.member_id, MAX({day}) AS day FROM transactions t WHERE {counts}"
        " GROUP BY t.member_id) l ON l.member_id = m.id"
        f" LEFT JOIN (SELECT t.member_id, SUM({sql_tier_points('t.kind', 't.points')}) AS points"
        f" FROM transactions t JOIN members b ON b.id = t.member_id WHERE {counts}"
        f" AND {day} >= b.tier_since_day AND {day} <= b.tier_day GROUP BY t.member_id) w"
        " ON w.member_id = m.id"
        " WHERE m.tier_day IS DISTINCT FROM l.day OR m.tier_points <> COALESCE(w.points, 0)"
        " OR (m.tier_day IS NOT NULL"
        " AND (m.tier_since_day IS NULL OR m.tier_since_day > m.tier_day))",
    )


def member_balances(session: Session) -> list[str]:
    """Invariant 2, as findings."""
    by_lots = sample_rows(
        session,
        "SELECT m.id AS member_id, m.balance, COALESCE(l.total, 0) AS lots FROM members m"
        " LEFT JOIN (SELECT member_id, SUM(remaining) AS total FROM lots GROUP BY member_id) l"
        " ON l.member_id = m.id WHERE m.balance <> COALESCE(l.total, 0)",
    )
    lot_history = sample_rows(
        session,
        "SELECT l.id AS lot_id, l.points, l.remaining, COALESCE(mv.total, 0) AS moved FROM lots l"
        " LEFT JOIN (SELECT lot_id, SUM(points) AS total FROM lot_movements GROUP BY lot_id) mv"
        " ON mv.lot_id = l.id WHERE l.remaining <> l.points + COALESCE(mv.total, 0)",
    )
    side_by_side = sample_rows(
        session,
        "SELECT d.member_id FROM lots d JOIN lots p ON p.member_id = d.member_id"
        " WHERE d.is_deficit AND d.remaining < 0 AND p.remaining > 0",
    )
    unrecorded_negative = sample_rows(session, _NEGATIVE_BEYOND_CLAWBACKS)
    tier_basis = _tier_basis(session)
    return (
        [f"balance != open lots: {r}" for r in by_lots]
        + [f"lot remaining != points + movements: {r}" for r in lot_history]
        + [f"deficit beside open lots: {r}" for r in side_by_side]
        + [f"negative balance without a recorded clawback: {r}" for r in unrecorded_negative]
        + [f"tier basis != its transactions: {r}" for r in tier_basis]
    )


def holds(session: Session) -> list[str]:
    """Invariant 3, as findings."""
    held = sample_rows(
        session,
        "SELECT m.id AS member_id, m.held, COALESCE(h.total, 0) AS active_holds FROM members m"
        " LEFT JOIN (SELECT member_id, SUM(points) AS total FROM holds WHERE status = 'active'"
        " GROUP BY member_id) h ON h.member_id = m.id WHERE m.held <> COALESCE(h.total, 0)",
    )
    over = sample_rows(session, _HELD_BEYOND_CLAWBACKS)
    captured = sample_rows(
        session,
        "SELECT h.id AS hold_id, h.captured_points, t.points FROM holds h"
        " LEFT JOIN transactions t ON t.hold_id = h.id AND t.kind = 'burn'"
        " WHERE (h.status = 'captured') <> (t.id IS NOT NULL)"
        " OR (t.id IS NOT NULL AND t.points <> h.captured_points)",
    )
    return (
        [f"held != active holds: {r}" for r in held]
        + [f"held exceeds balance: {r}" for r in over]
        + [f"capture does not match its burn: {r}" for r in captured]
    )


LEDGER_CHECKS: list[tuple[int, str, Callable[[Session], list[str]]]] = [
    (
        1,
        "every transfer moves positive points between two accounts of its kind's roles;"
        " each account's balance = its credits less its debits; every partner and rate card"
        " a ledger row names exists",
        transfers,
    ),
    (
        2,
        "member balance = its open lots; negative only by a recorded clawback;"
        " its tier basis = its earns less earn reversals of the days it covers",
        member_balances,
    ),
    (
        3,
        "held points = active holds and never exceed the balance; available = balance - held",
        holds,
    ),
]
