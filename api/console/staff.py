"""The operator's and finance's console: the open period at a glance with a chart of the past
periods, the closed periods (summary, statements, the cross-brand heat map), partners with
their rate-card history and keys (operator), and webhook health.

The numbers come from :mod:`settlement.reports` (the API's reports); keys are issued and
revoked by :mod:`partners.keys`, as ``/v1/admin`` does.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, post
from litestar.response import Redirect, Template
from sqlalchemy.orm import Session

from api.console.charts import HeatCell, PeriodBar, flows_chart, heat_map
from api.console.statements import ConsoleId, parse_day
from api.console.web import (
    STAFF,
    back,
    field,
    form_of,
    page,
    problem_of,
    read,
    roles,
    signed_in,
    viewer_of,
)
from api.runtime import services_of
from coalition.db import transaction
from coalition.errors import CoalitionError, ValidationFailed
from partners.keys import create_key, get_key, list_keys, revoke_key
from partners.models import PARTNER_SCOPES
from partners.queries import active_rate_card, list_partners, partner_names
from partners.rates import get_partner, list_rate_cards
from partners.webhooks.endpoints import health
from settlement import reports, workflow
from settlement.models import Statement
from settlement.payments import bank_accounts

#: Closed periods the overview's chart shows (the latest, oldest on the left).
CHART_PERIODS = 12
COALITION = "the coalition"


class StaffPages(Controller):
    """``/console/`` for the operator and finance."""

    path = "/console"
    guards = [signed_in]  # noqa: RUF012 (Litestar's layer attribute)

    @get("/", opt=roles(*STAFF, "partner", "member"), sync_to_thread=True)
    def home(self, request: Request[Any, Any, Any]) -> Template | Redirect:
        """The overview for the staff; a partner's statements; a member's page."""
        viewer = viewer_of(request)
        if viewer.role == "partner":
            return back("/statements")
        if viewer.role == "member":
            return back("/member")
        now = services_of(request.app.state).clock()

        def overview(s: Session) -> Template:
            periods = reports.list_periods(s, before_id=None, limit=CHART_PERIODS).rows
            since = periods[0].end_at if periods else None
            open_flows = reports.flows(s, since, now)
            outstanding = reports.liability(s, now).outstanding_points
            pending = bank_accounts.pending_changes(s)
            pending_names = partner_names(s, {p.partner_id for p in pending})
            bars = []
            for period in reversed(periods):
                f = reports.flows(s, period.start_at, period.end_at)
                label = f"{period.start_at.day} {period.start_at:%b}"
                bars.append(PeriodBar(label, f.issued_points, f.redeemed_points, f.expired_points))
            return page(
                "overview.html",
                viewer,
                since=since,
                now=now,
                flows=open_flows,
                outstanding=outstanding,
                chart=flows_chart(bars),
                periods=list(periods),
                pending=pending,
                names=pending_names,
            )

        return read(request, overview)

    @get("/periods", opt=roles(*STAFF), sync_to_thread=True)
    def periods(self, request: Request[Any, Any, Any]) -> Template:
        """The closed periods, latest first, with their points flows."""
        viewer = viewer_of(request)

        def flows(s: Session) -> list[tuple[Any, Any]]:
            found = reports.list_periods(s, before_id=None, limit=100).rows
            return [(p, reports.flows(s, p.start_at, p.end_at)) for p in found]

        return page("periods.html", viewer, rows=read(request, flows))

    @get("/periods/{period_id:str}", opt=roles(*STAFF), sync_to_thread=True)
    def period(self, request: Request[Any, Any, Any], period_id: ConsoleId) -> Template:
        """A closed period: money per currency, the points roll-forward, every partner's
        statement and net position, the cross-brand heat map."""
        viewer = viewer_of(request)

        def period(s: Session) -> tuple[Any, list[Statement], set[Any], dict[str, str]]:
            summary = reports.summary(s, period_id)
            statements = workflow.list_statements(
                s, partner_id=None, status=None, period_id=period_id, before_id=None, limit=500
            ).rows
            cells = summary.cross_brand.cells
            ids = (
                {b for _, b in cells}
                | {o for o, _ in cells if o}
                | {st.partner_id for st in statements}
            )
            return summary, statements, ids, partner_names(s, ids)

        summary, statements, ids, names = read(request, period)
        cells = summary.cross_brand.cells
        label: dict[str | None, str] = {None: COALITION}
        label.update(names)
        # every partner of the period both ways (a partner's own redemptions on the diagonal),
        # and the coalition's bonus points as an issuer when it has any
        partners = sorted({label.get(p, p or "") for p in ids})
        issuers = partners + ([COALITION] if any(o is None for o, _ in cells) else [])
        heat = heat_map(
            issuers,
            partners,
            [
                HeatCell(label.get(o, o or COALITION), label.get(b, b or ""), p)
                for (o, b), p in cells.items()
            ],
        )
        return page(
            "period.html",
            viewer,
            summary=summary,
            document=summary.document(),
            statements=sorted(statements, key=lambda st: names.get(st.partner_id, "")),
            names=names,
            heat=heat if cells else None,
        )

    @get("/partners", opt=roles("operator"), sync_to_thread=True)
    def partners(self, request: Request[Any, Any, Any]) -> Template:
        """The partners, newest first, with the rate card in force."""
        viewer = viewer_of(request)
        now = services_of(request.app.state).clock()

        def partners(s: Session) -> Template:
            found = list_partners(s, limit=500).rows
            cards = {p.id: active_rate_card(s, p.id, now) for p in found}
            return page("partners.html", viewer, partners=found, cards=cards)

        return read(request, partners)

    def _partner_page(
        self, request: Request[Any, Any, Any], partner_id: str, **extra: Any
    ) -> Template:
        viewer = viewer_of(request)
        now = services_of(request.app.state).clock()

        def partner(s: Session) -> Template:
            return page(
                "partner.html",
                viewer,
                partner=get_partner(s, partner_id),
                cards=list_rate_cards(s, partner_id),
                in_force=active_rate_card(s, partner_id, now),
                keys=list_keys(s, partner_id),
                scopes=PARTNER_SCOPES,
                now=now,
                **extra,
            )

        return read(request, partner)

    @get("/partners/{partner_id:str}", opt=roles("operator"), sync_to_thread=True)
    def partner(self, request: Request[Any, Any, Any], partner_id: ConsoleId) -> Template:
        """A partner: its rate-card history and its keys."""
        return self._partner_page(request, partner_id)

    @post("/partners/{partner_id:str}/keys", opt=roles("operator"), sync_to_thread=True)
    def issue_key(self, request: Request[Any, Any, Any], partner_id: ConsoleId) -> Template:
        """Issue a partner key; an HMAC secret is shown on this page, this once. A rule broken
        (nothing is stored) shows the partner's page again with the problem."""
        services = services_of(request.app.state)
        form = form_of(request)
        try:
            public_key = field(form, "public_key").strip() or None
            with transaction(services.sessions) as s:
                new = create_key(
                    s,
                    secret_key=services.settings.secret_key,
                    role="partner",
                    partner_id=partner_id,
                    alg="ed25519" if public_key else "hmac-sha256",
                    scopes=[str(v) for v in form.getall("scopes", [])],
                    public_key=public_key,
                    expires_at=parse_day(field(form, "expires_at"), "expires_at"),
                    now=services.clock(),
                )
                new_key_id = new.key.id
        except CoalitionError as exc:
            found = problem_of(exc)
            return self._partner_page(request, partner_id, problem=found, status_code=found.status)
        return self._partner_page(request, partner_id, new_key_id=new_key_id, secret=new.secret)

    @post("/keys/{key_id:str}/revoke", opt=roles("operator"), sync_to_thread=True)
    def revoke(self, request: Request[Any, Any, Any], key_id: ConsoleId) -> Redirect:
        """Revoke a partner key now."""
        services = services_of(request.app.state)
        with transaction(services.sessions) as s:
            partner_id = get_key(s, key_id).partner_id
            if partner_id is None:
                raise ValidationFailed.at("key_id", "the console revokes partner keys")
            revoke_key(s, key_id, services.clock())
        services.keys.forget(key_id)  # committed: this process refuses it from now on
        return back(f"/partners/{partner_id}")

    @get("/webhooks/health", opt=roles(*STAFF), sync_to_thread=True)
    def webhook_health(self, request: Request[Any, Any, Any]) -> Template:
        """Every partner's endpoints, failing ones first, and the latest attempts."""
        viewer = viewer_of(request)

        def webhooks(s: Session) -> Template:
            endpoints, recent = health(s)
            owners = {e.endpoint.partner_id for e in endpoints} | {p for _, _, p in recent}
            names = partner_names(s, owners)
            return page(
                "webhook_health.html", viewer, endpoints=endpoints, recent=recent, names=names
            )

        return read(request, webhooks)
