"""The tables the demo prints: points per partner, the coalition's flows and liability, the
cross-brand matrix, the operations done and refused."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cli.simulation.period import Simulation
from cli.simulation.world import DEMO_VALIDITY_DAYS, PARTNERS, PERIOD_DAYS
from coalition.config import Settings
from coalition.errors import required
from coalition.ledger.kinds import KINDS, Flow
from coalition.models import Member, Transaction
from partners.models import Partner
from settlement import reports
from settlement.reports import liability_at


def header(settings: Settings, sim: Simulation, seed: int) -> str:
    """What was simulated."""
    return (
        f"Demo coalition: {len(PARTNERS)} partners, {sim.member_target} members, "
        f"{PERIOD_DAYS} days ({sim.start:%Y-%m-%d} to {sim.end:%Y-%m-%d %H:%M} UTC), seed {seed}.\n"
        f"Points are valid {DEMO_VALIDITY_DAYS} days in this demo (the program's configured "
        f"validity is {settings.points_validity_days} days), so the period shows breakage."
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Plain-text columns: the first left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  " + "  ".join(parts).rstrip())
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


def _cell(value: object) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@dataclass(slots=True)
class _PartnerPoints:
    issued: int = 0
    redeemed: int = 0
    earn_reversed: int = 0
    burn_reversed: int = 0


def _partner_points(s: Session) -> dict[str, _PartnerPoints]:
    """Points by partner and kind (the money is the statements')."""
    totals: dict[str, _PartnerPoints] = {}
    rows = s.execute(
        select(Transaction.partner_id, Transaction.kind, func.sum(Transaction.points))
        .where(Transaction.partner_id.is_not(None))
        .group_by(Transaction.partner_id, Transaction.kind)
    ).all()
    for partner_id, kind, points in rows:
        t = totals.setdefault(required(partner_id, "a partner's transaction"), _PartnerPoints())
        flow = KINDS[kind]
        if flow.issued:
            t.issued += int(points)
        elif flow.redeemed:
            t.redeemed += int(points)
        elif flow.flow is Flow.EARN_REVERSED:
            t.earn_reversed += int(points)
        elif flow.flow is Flow.BURN_REVERSED:
            t.burn_reversed += int(points)
    return totals


def summary(s: Session, sim: Simulation, end: datetime) -> list[str]:
    """Points per partner, then the coalition's flows, liability and members."""
    partners = {p.id: p for p in s.scalars(select(Partner).order_by(Partner.created_at))}
    slug = sim.slugs()
    totals = _partner_points(s)
    lines = ["", "Per partner: points"]
    point_rows = []
    for pid, partner in partners.items():
        t = totals.get(pid, _PartnerPoints())
        point_rows.append(
            [f"{slug[pid]} ({partner.name})", partner.currency, t.issued, t.redeemed,
             t.earn_reversed, t.burn_reversed]
        )  # fmt: skip
    lines += table(
        ["partner", "currency", "issued", "redeemed", "earn reversed", "burn reversed"],
        point_rows,
    )
    lines += _coalition_lines(s, sim, end)
    return lines


def _coalition_lines(s: Session, sim: Simulation, end: datetime) -> list[str]:
    flows = reports.flows(s, None, end)
    liability = liability_at(s, end)
    issued = flows.issued_points
    members = s.scalar(select(func.count()).select_from(Member)) or 0
    active = reports.active_members(s, end - timedelta(days=30), end)
    negative = s.scalar(select(func.count()).select_from(Member).where(Member.balance < 0)) or 0
    tiers = dict(
        s.execute(
            select(Transaction.tier, func.count())
            .where(Transaction.kind == "earn")
            .group_by(Transaction.tier)
        ).all()
    )
    breakage = reports.share(flows.expired_points, issued)
    return [
        "",
        "Coalition",
        *table(
            ["points", "total"],
            [
                ["issued by earns", flows.earned_points],
                ["issued as bonuses (partner- and coalition-funded)", flows.bonus_points],
                ["redeemed (burns and captures)", flows.redeemed_points],
                [f"expired (breakage: {breakage} of issued)", flows.expired_points],
                ["earn reversals (taken back)", flows.earn_reversed_points],
                ["burn reversals (given back)", flows.burn_reversed_points],
                ["operator adjustments (net)", flows.adjusted_points],
                [f"outstanding liability at {end:%Y-%m-%d %H:%M}", liability],
            ],
        ),
        f"  members: {members}, active in the last 30 days: {active}, "
        f"owing points after a clawback: {negative}",
        "  earns by tier: "
        + ", ".join(f"{tier} {tiers[tier]:,}" for tier in sorted(tiers, key=str)),
        f"  holds left to expire and released by the job: {sim.expired_holds}",
    ]


def cross_brand_lines(matrix: reports.CrossBrand, slug: dict[str, str]) -> list[str]:
    """Which partner issued the points redeemed where, net of burn reversals."""
    burners = list(slug.values())
    named = {(slug[o] if o else "coalition", slug[b]): p for (o, b), p in matrix.cells.items()}
    origins = [*(b for b in burners if any(k[0] == b for k in named)), "coalition"]
    table_rows = [
        [origin, *(named.get((origin, b), 0) for b in burners),
         sum(named.get((origin, b), 0) for b in burners)]
        for origin in origins
    ]  # fmt: skip
    total = matrix.redeemed_points
    from_operator = sum(p for (o, _), p in matrix.cells.items() if o is None)
    return [
        "",
        f"Cross-brand: {reports.share(matrix.cross_points, total)} of redeemed points were issued"
        f" by another partner ({reports.share(from_operator, total)} came from coalition bonuses"
        " and adjustments)",
        "  points issued by (rows) and redeemed at (columns), net of burn reversals:",
        *table(["issued by", *burners, "total"], table_rows),
    ]


def operations_table(sim: Simulation) -> list[str]:
    """Each kind of operation: done, refused, and why."""
    kinds = sorted(set(sim.done) | {k for k, _ in sim.errors})
    rows = []
    for kind in kinds:
        refused = {code: n for (k, code), n in sim.errors.items() if k == kind}
        detail = ", ".join(f"{code} {n}" for code, n in sorted(refused.items()))
        rows.append([kind, sim.done[kind], sum(refused.values()), detail])
    rows.append(["points-expiry job (expiry transactions)", sim.expiry_runs, 0, ""])
    errors = sum(sim.errors.values())
    rows.append(["total", sim.operation_count() - errors, errors, ""])
    return table(["operation", "done", "refused", "refused because"], rows)
