"""Statements in the console: the list, one statement (lines, totals, disputes, history), the
signed downloads, and the workflow's actions: acknowledge and dispute (the partner), resolve
(the operator), settle (operator and finance).

Each action is one call of :mod:`settlement.workflow`, the very functions the API calls, with
the session as the actor; a partner session reaches only its partner's statements (another's
is ``404``, as in the API).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from litestar import Controller, Request, Response, get, post
from litestar.params import PathParameter, QueryParameter
from litestar.response import Redirect, Template
from sqlalchemy import select

from api.console.web import STAFF, Viewer, back, form_of, page, roles, signed_in, viewer_of
from api.runtime import services_of
from api.settlement import export_response
from api.views import decode_cursor, encode_cursor
from coalition.db import transaction
from coalition.errors import ValidationFailed
from partners.queries import partner_names
from settlement import workflow
from settlement.models import STATEMENT_STATUSES, Period
from settlement.statements import document_of

PAGE_SIZE = 50
#: Lines a statement's page lists (and offers to dispute); the downloads have every line.
LINES_SHOWN = 1000
ID_PATTERN = r"^[a-z]+_[0-9A-Z]+$"
ConsoleId = Annotated[str, PathParameter(min_length=1, max_length=64, pattern=ID_PATTERN)]
OptionalId = Annotated[str | None, QueryParameter(min_length=1, max_length=64, pattern=ID_PATTERN)]
Cursor = Annotated[str | None, QueryParameter(max_length=200)]


def actor_of(viewer: Viewer) -> workflow.Actor:
    """The workflow's actor for a console session: its id stands for the key."""
    return workflow.Actor(
        viewer.session_id,
        viewer.role,
        viewer.partner_id,
        on_behalf_of=viewer.key_id,
        via_console=True,
    )


def parse_day(raw: str | None, field: str) -> datetime | None:
    """A form's or a filter's date (``YYYY-MM-DD``) as midnight UTC; empty: None."""
    if not raw:
        return None
    try:
        return datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ValidationFailed.at(field, "a date such as 2026-01-31") from None


class StatementPages(Controller):
    """``/console/statements``, ``/console/disputes``."""

    path = "/console"
    guards = [signed_in]  # noqa: RUF012 (Litestar's layer attribute)

    @get("/statements", opt=roles(*STAFF, "partner"), sync_to_thread=True)
    def list_statements(
        self,
        request: Request[Any, Any, Any],
        status: Annotated[str | None, QueryParameter(max_length=16)] = None,
        period_id: OptionalId = None,
        cursor: Cursor = None,
    ) -> Template:
        """Statements, newest first, with their net positions; filter by status or period."""
        viewer = viewer_of(request)
        services = services_of(request.app.state)
        with transaction(services.sessions) as s:
            found = workflow.list_statements(
                s,
                partner_id=viewer.scope_partner,
                status=status or None,
                period_id=period_id if viewer.staff else None,
                before_id=decode_cursor(cursor, "stmt"),
                limit=PAGE_SIZE,
            )
            ids = {row.period_id for row in found.rows}
            periods = {p.id: p for p in s.scalars(select(Period).where(Period.id.in_(ids)))}
            names = partner_names(s, (row.partner_id for row in found.rows))
        return page(
            "statements.html",
            viewer,
            statements=found.rows,
            periods=periods,
            names=names,
            statuses=STATEMENT_STATUSES,
            status=status or "",
            period_id=period_id or "",
            next_cursor=encode_cursor(found.last_id),
        )

    @get("/statements/{statement_id:str}", opt=roles(*STAFF, "partner"), sync_to_thread=True)
    def statement(self, request: Request[Any, Any, Any], statement_id: ConsoleId) -> Template:
        """One statement: totals, net position, lines, cross-brand points, disputes, history
        and the actions the viewer may take."""
        viewer = viewer_of(request)
        services = services_of(request.app.state)
        with transaction(services.sessions) as s:
            found = workflow.get_statement(s, statement_id, partner_id=viewer.scope_partner)
            document = document_of(found)
            disputes = workflow.disputes_of(s, statement_id, partner_id=viewer.scope_partner)
            history = workflow.history(s, statement_id)
            origins = {row["origin_partner_id"] for row in document["cross_brand"]}
            names = partner_names(s, {found.partner_id} | {o for o in origins if o})
        return page(
            "statement.html",
            viewer,
            statement=found,
            document=document,
            disputes=disputes,
            history=history,
            names=names,
            lines=document["lines"][:LINES_SHOWN],
            today=services.clock().date().isoformat(),
        )

    @get(
        "/statements/{statement_id:str}/export",
        opt=roles(*STAFF, "partner"),
        sync_to_thread=True,
        media_type="application/octet-stream",
    )
    def export(
        self,
        request: Request[Any, Any, Any],
        statement_id: ConsoleId,
        format: Annotated[Literal["json", "csv"], QueryParameter()] = "csv",
    ) -> Response[bytes]:
        """The signed export, the same bytes as the API's (``coalition statements verify``)."""
        viewer = viewer_of(request)
        services = services_of(request.app.state)
        with transaction(services.sessions) as s:
            found = workflow.get_statement(s, statement_id, partner_id=viewer.scope_partner)
            return export_response(found, format)

    @post("/statements/{statement_id:str}/acknowledge", opt=roles("partner"), sync_to_thread=True)
    def acknowledge(self, request: Request[Any, Any, Any], statement_id: ConsoleId) -> Redirect:
        """The partner has checked its statement."""
        viewer = viewer_of(request)
        services = services_of(request.app.state)
        with transaction(services.sessions) as s:
            workflow.acknowledge(
                s,
                statement_id,
                actor_of(viewer),
                secret_key=services.settings.secret_key,
                now=services.clock(),
            )
        return back(f"/statements/{statement_id}")

    @post("/statements/{statement_id:str}/disputes", opt=roles("partner"), sync_to_thread=True)
    def dispute(self, request: Request[Any, Any, Any], statement_id: ConsoleId) -> Redirect:
        """Dispute the statement, naming the ticked lines."""
        viewer = viewer_of(request)
        services = services_of(request.app.state)
        form = form_of(request)
        with transaction(services.sessions) as s:
            workflow.open_dispute(
                s,
                statement_id,
                actor_of(viewer),
                reason=str(form.get("reason", "")),
                transaction_ids=[str(t) for t in form.getall("transaction_ids", [])],
                secret_key=services.settings.secret_key,
                now=services.clock(),
            )
        return back(f"/statements/{statement_id}")

    @post("/disputes/{dispute_id:str}/resolve", opt=roles("operator"), sync_to_thread=True)
    def resolve(self, request: Request[Any, Any, Any], dispute_id: ConsoleId) -> Redirect:
        """Resolve a dispute (accepted or rejected, a note, an optional adjustment)."""
        viewer = viewer_of(request)
        services = services_of(request.app.state)
        form = form_of(request)
        with transaction(services.sessions) as s:
            done = workflow.resolve(
                s,
                dispute_id,
                actor_of(viewer),
                outcome=str(form.get("outcome", "")),
                note=str(form.get("note", "")) or None,
                adjustment=str(form.get("adjustment", "")).strip() or None,
                secret_key=services.settings.secret_key,
                now=services.clock(),
            )
            statement_id = done.statement_id
        return back(f"/statements/{statement_id}")

    @post("/statements/{statement_id:str}/settle", opt=roles(*STAFF), sync_to_thread=True)
    def settle(self, request: Request[Any, Any, Any], statement_id: ConsoleId) -> Redirect:
        """Record the payment that settled the statement."""
        viewer = viewer_of(request)
        services = services_of(request.app.state)
        form = form_of(request)
        paid_at = parse_day(str(form.get("paid_at", "")), "paid_at")
        if paid_at is None:
            raise ValidationFailed.at("paid_at", "the day the payment was made")
        with transaction(services.sessions) as s:
            workflow.settle(
                s,
                statement_id,
                actor_of(viewer),
                payment_reference=str(form.get("payment_reference", "")),
                paid_at=paid_at,
                secret_key=services.settings.secret_key,
                now=services.clock(),
            )
        return back(f"/statements/{statement_id}")
