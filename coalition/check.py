"""``coalition check``: verify every ledger invariant of docs/invariants.md on a database.

Each check is one SQL aggregate over the whole ledger (a full audit, not a hot-path query) and
reports at most :data:`SAMPLE` offending ids, so a report stays readable at any size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import TextClause, bindparam, func, select, text
from sqlalchemy.orm import Session

from coalition.db import UTCDateTime
from coalition.models import OPERATOR_ACCOUNTS, TRANSACTION_KINDS, Posting, Transaction

SAMPLE = 10


@dataclass(slots=True)
class Finding:
    """One invariant, whether it holds, and what breaks it."""

    invariant: int
    name: str
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing breaks the invariant."""
        return not self.violations


def _rows(session: Session, sql: str, **params: object) -> list[str]:
    result = session.execute(text(sql + f" LIMIT {SAMPLE}"), params)
    return [", ".join(f"{k}={v}" for k, v in row._mapping.items()) for row in result]


def _zero_sum(session: Session) -> list[str]:
    unbalanced = _rows(
        session,
        "SELECT transaction_id, SUM(points) AS total FROM postings"
        " GROUP BY transaction_id HAVING SUM(points) <> 0",
    )
    one_legged = _rows(
        session,
        "SELECT t.id AS transaction_id, COUNT(p.id) AS postings FROM transactions t"
        " LEFT JOIN postings p ON p.transaction_id = t.id"
        " GROUP BY t.id HAVING COUNT(p.id) < 2",
    )
    return [f"unbalanced: {r}" for r in unbalanced] + [
        f"fewer than 2 legs: {r}" for r in one_legged
    ]


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


def _member_balances(session: Session) -> list[str]:
    by_postings = _rows(
        session,
        "SELECT m.id AS member_id, m.balance, COALESCE(p.total, 0) AS postings FROM members m"
        " LEFT JOIN (SELECT account_id, SUM(points) AS total FROM postings GROUP BY account_id) p"
        " ON p.account_id = m.account_id WHERE m.balance <> COALESCE(p.total, 0)",
    )
    by_lots = _rows(
        session,
        "SELECT m.id AS member_id, m.balance, COALESCE(l.total, 0) AS lots FROM members m"
        " LEFT JOIN (SELECT member_id, SUM(remaining) AS total FROM lots GROUP BY member_id) l"
        " ON l.member_id = m.id WHERE m.balance <> COALESCE(l.total, 0)",
    )
    lot_history = _rows(
        session,
        "SELECT l.id AS lot_id, l.points, l.remaining, COALESCE(mv.total, 0) AS moved FROM lots l"
        " LEFT JOIN (SELECT lot_id, SUM(points) AS total FROM lot_movements GROUP BY lot_id) mv"
        " ON mv.lot_id = l.id WHERE l.remaining <> l.points + COALESCE(mv.total, 0)",
    )
    side_by_side = _rows(
        session,
        "SELECT d.member_id FROM lots d JOIN lots p ON p.member_id = d.member_id"
        " WHERE d.is_deficit AND d.remaining < 0 AND p.remaining > 0",
    )
    unrecorded_negative = _rows(session, _NEGATIVE_BEYOND_CLAWBACKS)
    return (
        [f"balance != postings: {r}" for r in by_postings]
        + [f"balance != open lots: {r}" for r in by_lots]
        + [f"lot remaining != points + movements: {r}" for r in lot_history]
        + [f"deficit beside open lots: {r}" for r in side_by_side]
        + [f"negative balance without a recorded clawback: {r}" for r in unrecorded_negative]
    )


def _holds(session: Session) -> list[str]:
    held = _rows(
        session,
        "SELECT m.id AS member_id, m.held, COALESCE(h.total, 0) AS active_holds FROM members m"
        " LEFT JOIN (SELECT member_id, SUM(points) AS total FROM holds WHERE status = 'active'"
        " GROUP BY member_id) h ON h.member_id = m.id WHERE m.held <> COALESCE(h.total, 0)",
    )
    over = _rows(session, _HELD_BEYOND_CLAWBACKS)
    captured = _rows(
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


_LIABILITY_BY_POSTINGS = """
SELECT COALESCE(SUM(p.points), 0) FROM postings p JOIN accounts a ON a.id = p.account_id
WHERE a.kind = 'member' AND p.posted_at <= :at
"""

_LIABILITY_BY_CONTRA = """
SELECT COALESCE(SUM(p.points), 0) FROM postings p JOIN accounts a ON a.id = p.account_id
WHERE a.kind <> 'member' AND p.posted_at <= :at
"""


def _at(sql: str) -> TextClause:
    return text(sql).bindparams(bindparam("at", type_=UTCDateTime()))


def liability_at(session: Session, at: datetime) -> int:
    """Outstanding points (the operator's liability) at ``at``, from the members' postings."""
    return int(session.execute(_at(_LIABILITY_BY_POSTINGS), {"at": at}).scalar_one())


@dataclass(frozen=True, slots=True)
class Liability:
    """The operator's outstanding points at ``at`` and the flows that make them up.

    ``outstanding = issued - earn_reversed - redeemed + burn_reversed - expired + adjusted``
    (invariant 4 of docs/invariants.md).
    """

    at: datetime
    outstanding_points: int
    earned_points: int
    bonus_points: int
    earn_reversed_points: int
    redeemed_points: int
    burn_reversed_points: int
    expired_points: int
    adjusted_points: int

    @property
    def by_flows_points(self) -> int:
        """Outstanding points as the flows add them up (equals ``outstanding_points``)."""
        return (
            self.issued_points
            - self.earn_reversed_points
            - self.redeemed_points
            + self.burn_reversed_points
            - self.expired_points
            + self.adjusted_points
        )

    @property
    def issued_points(self) -> int:
        """Points handed out: earns and bonuses."""
        return self.earned_points + self.bonus_points


def liability(session: Session, at: datetime) -> Liability:
    """Outstanding points at ``at`` (from the members' postings) and totals by kind."""
    totals = dict.fromkeys(TRANSACTION_KINDS, 0)
    rows: Sequence[tuple[str, int | None]] = session.execute(
        select(Transaction.kind, func.sum(Transaction.points))
        .where(Transaction.posted_at <= at, Transaction.kind != "adjustment")
        .group_by(Transaction.kind)
    ).all()
    for kind, points in rows:
        totals[kind] = int(points or 0)
    # Adjustments are signed: what the operator's adjustment account gave members is the
    # negation of its postings.
    adjusted = session.scalar(
        select(func.coalesce(func.sum(Posting.points), 0))
        .join(Transaction, Transaction.id == Posting.transaction_id)
        .where(
            Transaction.kind == "adjustment",
            Posting.account_id == OPERATOR_ACCOUNTS["operator_adjustment"],
            Posting.posted_at <= at,
        )
    )
    return Liability(
        at=at,
        outstanding_points=liability_at(session, at),
        earned_points=totals["earn"],
        bonus_points=totals["bonus"],
        earn_reversed_points=totals["earn_reversal"],
        redeemed_points=totals["burn"],
        burn_reversed_points=totals["burn_reversal"],
        expired_points=totals["expiry"],
        adjusted_points=-int(adjusted or 0),
    )


def _liability(session: Session) -> list[str]:
    first, last = session.execute(
        select(func.min(Posting.posted_at), func.max(Posting.posted_at))
    ).one()
    if first is None or last is None:
        return []
    steps = 24
    moments = sorted({first + (last - first) * i / steps for i in range(steps + 1)})
    problems = []
    for at in moments:
        report = liability(session, at)
        expected = report.by_flows_points
        contra = int(session.execute(_at(_LIABILITY_BY_CONTRA), {"at": at}).scalar_one())
        if not expected == report.outstanding_points == -contra:
            problems.append(
                f"at {at.isoformat()}: issued+bonuses-redeemed-expired+/-reversals+/-adjustments"
                f" = {expected}, member postings = {report.outstanding_points},"
                f" other accounts = {-contra}"
            )
    return problems[:SAMPLE]


CHECKS: list[tuple[int, str, Callable[[Session], list[str]]]] = [
    (1, "every transaction's postings sum to zero", _zero_sum),
    (
        2,
        "member balance = its postings = its open lots; negative only by a recorded clawback",
        _member_balances,
    ),
    (
        3,
        "held points = active holds and never exceed the balance; available = balance - held",
        _holds,
    ),
    (
        4,
        "outstanding liability = issued + bonuses - redeemed - expired +/- reversals and "
        "adjustments, at any point in time",
        _liability,
    ),
]


def run_checks(session: Session) -> list[Finding]:
    """Run every invariant check; a finding per invariant."""
    findings = []
    for number, name, check in CHECKS:
        findings.append(Finding(number, name, check(session)))
    return findings
