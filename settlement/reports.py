"""The operator's numbers: the points flows and liability, a period's summary (money per
currency, the points roll-forward, breakage, active members, cross-brand share) and the
cross-brand matrix. Each number has one computation here, which the API, the demo and
``coalition check`` call.

Points flows are aggregates over transactions posted in a half-open window ``[since, until)``;
the liability at a moment is what the transfers before it moved into the members' accounts
less what they moved out. The roll-forward ``opening + issued + bonuses - redeemed - expired -
earn reversals + burn reversals + adjustments = closing`` holds exactly because every transfer
moves points between a member's account and one other account (invariant 1), in the direction
its kind declares (``coalition.ledger.kinds``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from msgspec import Struct
from sqlalchemy import ColumnElement, func, literal_column, select
from sqlalchemy.orm import Session

from coalition.errors import NotFound
from coalition.ledger.kinds import KINDS, Flow, sql_member_points
from coalition.models import Transaction
from coalition.money import format_amount
from coalition.pages import Page, first_rows
from settlement.document import PeriodRef
from settlement.lines import cross_brand_rows
from settlement.models import Period, Statement
from settlement.statements import period_ref

#: Shares are written with this many decimals (``"0.1834"``).
SHARE_PLACES = Decimal("0.0001")


def _window(column: Any, since: datetime | None, until: datetime) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [column < until]
    if since is not None:
        conditions.append(column >= since)
    return conditions


#: What a transfer adds to the members' points (the operator's liability).
_MEMBER_POINTS: ColumnElement[int] = literal_column(
    sql_member_points("transactions.kind", "transactions.points", "transactions.debit_account_id")
)


def member_net(
    session: Session, since: datetime | None, until: datetime, *conditions: ColumnElement[bool]
) -> int:
    """Points the transfers posted in ``[since, until)`` (and meeting ``conditions``) moved
    into the members' accounts, less those they moved out."""
    total = session.scalar(
        select(func.coalesce(func.sum(_MEMBER_POINTS), 0))
        .select_from(Transaction)
        .where(*_window(Transaction.posted_at, since, until), *conditions)
    )
    return int(total or 0)


def outstanding_before(session: Session, until: datetime) -> int:
    """Points the members hold (the operator's liability) from transfers before ``until``."""
    return member_net(session, None, until)


@dataclass(frozen=True, slots=True)
class Flows:
    """Points moved by kind in ``[since, until)`` (``since=None``: from the beginning).

    ``adjusted_points`` is signed (what the operator's adjustment account gave members); the
    other flows are positive totals of their kind.
    """

    since: datetime | None
    until: datetime
    earned_points: int
    bonus_points: int
    earn_reversed_points: int
    redeemed_points: int
    burn_reversed_points: int
    expired_points: int
    adjusted_points: int

    @property
    def issued_points(self) -> int:
        """Points handed out: earns and bonuses."""
        return self.earned_points + self.bonus_points

    @property
    def net_points(self) -> int:
        """How much the liability moved: each kind's flow with the sign it moves the members'
        points by (issued - earn reversed - redeemed + burn reversed - expired + adjusted)."""
        return sum(k.liability_sign * getattr(self, f"{k.flow}_points") for k in KINDS.values())


def flows(session: Session, since: datetime | None, until: datetime) -> Flows:
    """The points flows of ``[since, until)``, one ``GROUP BY`` and one sum."""
    totals = {f"{k.flow}_points": 0 for k in KINDS.values()}
    one_way = [name for name, k in KINDS.items() if not k.either_way]
    for kind, points in session.execute(
        select(Transaction.kind, func.sum(Transaction.points))
        .where(Transaction.kind.in_(one_way), *_window(Transaction.posted_at, since, until))
        .group_by(Transaction.kind)
    ):
        totals[f"{KINDS[kind].flow}_points"] = int(points or 0)
    either = [name for name, k in KINDS.items() if k.either_way]
    totals[f"{Flow.ADJUSTED}_points"] = member_net(
        session, since, until, Transaction.kind.in_(either)
    )
    return Flows(since=since, until=until, **totals)


@dataclass(frozen=True, slots=True)
class Liability:
    """The operator's outstanding points at ``at`` (transfers at or before it) and the flows
    that make them up: ``outstanding_points == flows.net_points`` (invariant 4)."""

    at: datetime
    outstanding_points: int
    flows: Flows


def liability(session: Session, at: datetime) -> Liability:
    """The liability report as of ``at`` (inclusive: timestamps have microsecond precision)."""
    until = at + timedelta(microseconds=1)
    return Liability(at, outstanding_before(session, until), flows(session, None, until))


def share(part: int, whole: int) -> str | None:
    """``part / whole`` as a decimal string with four places, ``None`` when ``whole`` is 0."""
    if whole == 0:
        return None
    return str((Decimal(part) / Decimal(whole)).quantize(SHARE_PLACES))


# --- periods ------------------------------------------------------------------------------


def get_period(session: Session, period_id: str) -> Period:
    """A closed period; :class:`NotFound` if there is none."""
    period = session.get(Period, period_id)
    if period is None:
        raise NotFound(f"no period {period_id!r}")
    return period


def list_periods(session: Session, *, before_id: str | None, limit: int) -> Page[Period]:
    """Closed periods, the latest first (keyset on the end: a period's id is the cursor)."""
    query = select(Period).order_by(Period.end_at.desc(), Period.id.desc())
    if before_id is not None:
        before = session.get(Period, before_id)
        if before is not None:
            query = query.where(Period.end_at < before.end_at)
    return first_rows(session, query, limit)


class MoneyFigures(Struct):
    """One currency's money in a period: billed, reimbursed, adjustments, operator margin."""

    currency: str
    statements: int
    billed: str
    reimbursed: str
    adjustments: str
    margin: str


class RollForward(Struct):
    """opening + issued + bonuses - redeemed - expired - earn_reversed + burn_reversed +
    adjusted = closing (``balances``)."""

    opening_liability: int
    issued: int
    bonuses: int
    redeemed: int
    expired: int
    earn_reversed: int
    burn_reversed: int
    adjusted: int
    closing_liability: int
    balances: bool


class PeriodSummary(Struct):
    """``GET /v1/admin/periods/{id}/summary``."""

    period: PeriodRef
    money: list[MoneyFigures]
    points: RollForward
    breakage_share: str | None
    active_members: int
    cross_brand_share: str | None


class CrossBrandCell(Struct):
    """Points issued by ``issued_by`` (null: the coalition) and redeemed at ``redeemed_at``."""

    issued_by: str | None
    redeemed_at: str
    points: int


class CrossBrandReport(Struct):
    """``GET /v1/admin/reports/cross-brand``: the matrix of a closed period."""

    period: PeriodRef
    cells: list[CrossBrandCell]
    redeemed_points: int
    cross_brand_points: int
    cross_brand_share: str | None


@dataclass(slots=True)
class CurrencyFigures:
    """Money of one currency over a period's statements, in minor units."""

    currency: str
    statements: int = 0
    billed_minor: int = 0
    reimbursed_minor: int = 0
    adjustments_minor: int = 0

    @property
    def margin_minor(self) -> int:
        """What the operator keeps: billed - reimbursed - adjustments (= - the sum of nets)."""
        return self.billed_minor - self.reimbursed_minor - self.adjustments_minor

    def document(self) -> MoneyFigures:
        """As the summary writes it."""
        c = self.currency
        return MoneyFigures(
            currency=c,
            statements=self.statements,
            billed=format_amount(self.billed_minor, c),
            reimbursed=format_amount(self.reimbursed_minor, c),
            adjustments=format_amount(self.adjustments_minor, c),
            margin=format_amount(self.margin_minor, c),
        )


def currency_figures(session: Session, period_id: str) -> list[CurrencyFigures]:
    """Per currency: billed (issued - earn reversed), reimbursed (redeemed - burn reversed),
    adjustments and the operator's margin, from the period's statements (one ``GROUP BY``)."""
    rows = session.execute(
        select(
            Statement.currency,
            func.count(),
            func.sum(Statement.issued_minor - Statement.earn_reversed_minor),
            func.sum(Statement.reimbursed_minor - Statement.burn_reversed_minor),
            func.sum(Statement.adjustments_minor),
        )
        .where(Statement.period_id == period_id)
        .group_by(Statement.currency)
        .order_by(Statement.currency)
    ).all()
    return [
        CurrencyFigures(cur, int(n), int(billed or 0), int(paid or 0), int(adj or 0))
        for cur, n, billed, paid, adj in rows
    ]


@dataclass(slots=True)
class CrossBrand:
    """Points issued by each partner (``None``: the coalition) and redeemed at each."""

    cells: dict[tuple[str | None, str], int] = field(default_factory=dict)

    @property
    def redeemed_points(self) -> int:
        """All redeemed points the lots account for (net of burn reversals)."""
        return sum(self.cells.values())

    @property
    def cross_points(self) -> int:
        """Points redeemed at a partner other than the one that issued them."""
        return sum(p for (o, b), p in self.cells.items() if o is not None and o != b)

    def document(self, period: Period) -> CrossBrandReport:
        """As the report writes it, for the closed ``period`` it is of."""
        rows = sorted(
            self.cells.items(), key=lambda kv: (kv[0][0] is None, kv[0][0] or "", kv[0][1])
        )
        return CrossBrandReport(
            period=period_ref(period),
            cells=[
                CrossBrandCell(issued_by=origin, redeemed_at=burner, points=points)
                for (origin, burner), points in rows
            ],
            redeemed_points=self.redeemed_points,
            cross_brand_points=self.cross_points,
            cross_brand_share=share(self.cross_points, self.redeemed_points),
        )


def cross_brand(session: Session, period_id: str) -> CrossBrand:
    """The cross-brand matrix of a closed period: the very rows its statements carry."""
    get_period(session, period_id)
    matrix = CrossBrand()
    for burner, origin, points in cross_brand_rows(session, period_id):
        matrix.cells[(origin, burner)] = points
    return matrix


def active_members(session: Session, since: datetime, until: datetime) -> int:
    """Members with an earn or a burn posted in ``[since, until)``."""
    count = session.scalar(
        select(func.count(func.distinct(Transaction.member_id))).where(
            Transaction.kind.in_(("earn", "burn")), *_window(Transaction.posted_at, since, until)
        )
    )
    return int(count or 0)


@dataclass(frozen=True, slots=True)
class Summary:
    """A closed period's summary (``GET /v1/admin/periods/{id}/summary``)."""

    period: Period
    money: list[CurrencyFigures]
    opening_points: int
    flows: Flows
    closing_points: int
    active_members: int
    cross_brand: CrossBrand

    @property
    def balances(self) -> bool:
        """opening + the period's flows = closing."""
        return self.opening_points + self.flows.net_points == self.closing_points

    def document(self) -> PeriodSummary:
        """As the API writes it."""
        f = self.flows
        return PeriodSummary(
            period=period_ref(self.period),
            money=[m.document() for m in self.money],
            points=RollForward(
                opening_liability=self.opening_points,
                issued=f.earned_points,
                bonuses=f.bonus_points,
                redeemed=f.redeemed_points,
                expired=f.expired_points,
                earn_reversed=f.earn_reversed_points,
                burn_reversed=f.burn_reversed_points,
                adjusted=f.adjusted_points,
                closing_liability=self.closing_points,
                balances=self.balances,
            ),
            breakage_share=share(f.expired_points, f.issued_points),
            active_members=self.active_members,
            cross_brand_share=share(
                self.cross_brand.cross_points, self.cross_brand.redeemed_points
            ),
        )


def summary(session: Session, period_id: str) -> Summary:
    """The summary of a closed period."""
    period = get_period(session, period_id)
    start, end = period.start_at, period.end_at
    return Summary(
        period=period,
        money=currency_figures(session, period.id),
        opening_points=outstanding_before(session, start),
        flows=flows(session, start, end),
        closing_points=outstanding_before(session, end),
        active_members=active_members(session, start, end),
        cross_brand=cross_brand(session, period.id),
    )


def liability_at(session: Session, at: datetime) -> int:
    """Outstanding points at ``at`` (transfers at or before it)."""
    return outstanding_before(session, at + timedelta(microseconds=1))
