"""Statements in the console: the list, one statement (lines, totals, disputes, history), the
signed downloads, and the workflow's actions: acknowledge and dispute (the partner), resolve
(the operator), settle (operator and finance).

Each action is one call of :mod:`settlement.workflow`, the very functions the API calls, with
the session as the actor; a partner session reaches only its partner's statements (another's
is ``404``, as in the API).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from litestar import Controller, Request, Response, get, post
from litestar.params import PathParameter, QueryParameter
from litestar.response import Redirect, Template
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.console.web import (
    STAFF,
    Problem,
    Viewer,
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
from api.pages import decode_cursor, encode_cursor
from api.runtime import services_of
from api.settlement import export_response
from coalition.db import transaction
from coalition.errors import CoalitionError, NotFound, ValidationFailed
from coalition.times import client_time
from partners.queries import partner_names
from settlement import workflow
from settlement.models import DISPUTE_OUTCOMES, STATEMENT_STATUSES, Period
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
    """A form's or a filter's date (``YYYY-MM-DD``) as midnight UTC, bounded like every time
    a client sends (:func:`coalition.times.client_time`); empty: None."""
    if not raw:
        return None
    try:
        day = datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ValidationFailed.at(field, "a date such as 2026-01-31") from None
    return client_time(day, field)


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
        before_id = decode_cursor(cursor, "stmt")

        def statements(s: Session) -> Template:
            found = workflow.list_statements(
                s,
                partner_id=viewer.scope_partner,
                status=status or None,
                period_id=period_id if viewer.staff else None,
                before_id=before_id,
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

        return read(request, statements)

    @get("/statements/{statement_id:str}", opt=roles(*STAFF, "partner"), sync_to_thread=True)
    def statement(self, request: Request[Any, Any, Any], statement_id: ConsoleId) -> Template:
        """One statement: totals, net position, lines, cross-brand points, disputes, history
        and the actions the viewer may take."""
        return self._statement_page(request, statement_id)

    def _statement_page(
        self,
        request: Request[Any, Any, Any],
        statement_id: str,
        *,
        problem: Problem | None = None,
        entered: dict[str, str] | None = None,
    ) -> Template:
        viewer = viewer_of(request)
        today = services_of(request.app.state).clock().date().isoformat()

        def statement(s: Session) -> Template:
            found = workflow.get_statement(s, statement_id, partner_id=viewer.scope_partner)
            document = document_of(found)
            origins = {row["origin_partner_id"] for row in document["cross_brand"]}
            return page(
                "statement.html",
                viewer,
                statement=found,
                document=document,
                disputes=workflow.disputes_of(s, statement_id, partner_id=viewer.scope_partner),
                history=workflow.history(s, statement_id),
                names=partner_names(s, {found.partner_id} | {o for o in origins if o}),
                lines=document["lines"][:LINES_SHOWN],
                today=today,
                outcomes=DISPUTE_OUTCOMES,
                problem=problem,
                entered=entered or {},
                status_code=problem.status if problem else 200,
            )

        return read(request, statement)

    def _act(
        self,
        request: Request[Any, Any, Any],
        statement_id: str,
        action: Callable[[Session], str],
        entered: dict[str, str] | None = None,
    ) -> Template | Redirect:
        """Run ``action`` (one transaction) and show the statement it names; a rule it broke
        (nothing was stored) re-renders the statement's page with the problem above its
        forms, and what was typed in them."""
        services = services_of(request.app.state)
        try:
            with transaction(services.sessions) as s:
                target = action(s)
        except CoalitionError as exc:
            try:
                return self._statement_page(
                    request, statement_id, problem=problem_of(exc), entered=entered
                )
            except NotFound:
                raise exc from None
        return back(f"/statements/{target}")

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
        return read(
            request,
            lambda s: export_response(
                workflow.get_statement(s, statement_id, partner_id=viewer.scope_partner), format
            ),
        )

    @post("/statements/{statement_id:str}/acknowledge", opt=roles("partner"), sync_to_thread=True)
    def acknowledge(
        self, request: Request[Any, Any, Any], statement_id: ConsoleId
    ) -> Template | Redirect:
        """The partner has checked its statement."""
        viewer = viewer_of(request)
        services = services_of(request.app.state)

        def run(s: Session) -> str:
            return workflow.acknowledge(
                s,
                statement_id,
                actor_of(viewer),
                secret_key=services.settings.secret_key,
                now=services.clock(),
            ).id

        return self._act(request, statement_id, run)

    @post("/statements/{statement_id:str}/disputes", opt=roles("partner"), sync_to_thread=True)
    def dispute(
        self, request: Request[Any, Any, Any], statement_id: ConsoleId
    ) -> Template | Redirect:
        """Dispute the statement, naming the ticked lines."""
        viewer = viewer_of(request)
        services = services_of(request.app.state)
        form = form_of(request)
        reason = field(form, "reason")

        def run(s: Session) -> str:
            return workflow.open_dispute(
                s,
                statement_id,
                actor_of(viewer),
                reason=reason,
                transaction_ids=[str(t) for t in form.getall("transaction_ids", [])],
                secret_key=services.settings.secret_key,
                now=services.clock(),
            ).statement_id

        return self._act(request, statement_id, run, {"reason": reason})

    @post("/disputes/{dispute_id:str}/resolve", opt=roles("operator"), sync_to_thread=True)
    def resolve(
        self, request: Request[Any, Any, Any], dispute_id: ConsoleId
    ) -> Template | Redirect:
        """Resolve a dispute (its outcome, a note, an optional adjustment)."""
        viewer = viewer_of(request)
        services = services_of(request.app.state)
        form = form_of(request)
        with transaction(services.sessions) as s:
            statement_id = workflow.get_dispute(s, dispute_id, partner_id=None).statement_id

        def run(s: Session) -> str:
            return workflow.resolve(
                s,
                dispute_id,
                actor_of(viewer),
                outcome=field(form, "outcome"),
                note=field(form, "note") or None,
                adjustment=field(form, "adjustment").strip() or None,
                secret_key=services.settings.secret_key,
                now=services.clock(),
            ).statement_id

        return self._act(request, statement_id, run)

    @post("/statements/{statement_id:str}/settle", opt=roles(*STAFF), sync_to_thread=True)
    def settle(
        self, request: Request[Any, Any, Any], statement_id: ConsoleId
    ) -> Template | Redirect:
        """Record the payment that settled the statement."""
        viewer = viewer_of(request)
        services = services_of(request.app.state)
        form = form_of(request)
        reference, day = field(form, "payment_reference"), field(form, "paid_at")

        def run(s: Session) -> str:
            paid_at = parse_day(day, "paid_at")
            if paid_at is None:
                raise ValidationFailed.at("paid_at", "the day the payment was made")
            return workflow.settle(
                s,
                statement_id,
                actor_of(viewer),
                payment_reference=reference,
                paid_at=paid_at,
                secret_key=services.settings.secret_key,
                now=services.clock(),
            ).id

        return self._act(
            request, statement_id, run, {"payment_reference": reference, "paid_at": day}
        )
