"""A partner's own console: its transactions (filters, pages) and its webhook endpoints with
their deliveries (send a test ping, send failed ones again). Its statements are in
:mod:`api.console.statements`.

The queries and actions are the API's (:func:`partners.queries.list_transactions`,
:class:`partners.webhooks.endpoints.Webhooks`), always limited to the session's partner: another
partner's endpoint is ``404``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.params import QueryParameter
from litestar.response import Redirect, Template
from sqlalchemy.orm import Session

from api.console.statements import ConsoleId, Cursor, parse_day
from api.console.web import (
    Problem,
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
from api.webhooks import webhooks_of
from coalition.db import transaction
from coalition.errors import ValidationFailed, required
from coalition.models import TRANSACTION_KINDS, Transaction
from coalition.pages import Page
from partners.models import Partner
from partners.queries import list_transactions
from partners.rates import get_partner

PAGE_SIZE = 50
Text = Annotated[str | None, QueryParameter(max_length=80)]


def _own(viewer_partner: str | None) -> str:
    return required(viewer_partner, "partner pages admit partner sessions only")


class PartnerPages(Controller):
    """``/console/transactions`` and ``/console/webhooks`` of a partner session."""

    path = "/console"
    guards = [signed_in]  # noqa: RUF012 (Litestar's layer attribute)

    @get("/transactions", opt=roles("partner"), sync_to_thread=True)
    def transactions(  # noqa: PLR0917 (the filters)
        self,
        request: Request[Any, Any, Any],
        kind: Text = None,
        member_id: Text = None,
        since: Text = None,
        until: Text = None,
        cursor: Cursor = None,
    ) -> Template:
        """The partner's transactions, newest first, :data:`PAGE_SIZE` a page; filter by
        kind, member and the days they were posted (``until`` included)."""
        viewer = viewer_of(request)
        until_day = parse_day(until, "until")
        since_day = parse_day(since, "since")
        before_id = decode_cursor(cursor, "txn")

        def transactions(s: Session) -> tuple[Partner, Page[Transaction]]:
            partner = get_partner(s, _own(viewer.partner_id))
            found = list_transactions(
                s,
                partner_id=partner.id,
                member_id=member_id or None,
                kind=kind or None,
                since=since_day,
                until=until_day + timedelta(days=1) if until_day else None,
                before_id=before_id,
                limit=PAGE_SIZE,
            )
            return partner, found

        partner, found = read(request, transactions)
        filters = {
            "kind": kind or "",
            "member_id": member_id or "",
            "since": since or "",
            "until": until or "",
        }
        return page(
            "transactions.html",
            viewer,
            partner=partner,
            transactions=found.rows,
            kinds=TRANSACTION_KINDS,
            filters=filters,
            next_cursor=encode_cursor(found.last_id),
        )

    @get("/webhooks", opt=roles("partner"), sync_to_thread=True)
    def endpoints(self, request: Request[Any, Any, Any]) -> Template:
        """The partner's webhook endpoints."""
        viewer = viewer_of(request)
        hooks = webhooks_of(services_of(request.app.state))
        found = read(request, lambda s: hooks.all(s, _own(viewer.partner_id)))
        return page("endpoints.html", viewer, endpoints=found)

    @get("/webhooks/{endpoint_id:str}", opt=roles("partner"), sync_to_thread=True)
    def endpoint(
        self,
        request: Request[Any, Any, Any],
        endpoint_id: ConsoleId,
        after: Annotated[int | None, QueryParameter(ge=0)] = None,
    ) -> Template:
        """One endpoint and its deliveries, newest first, with their last attempt."""
        return self._endpoint_page(request, endpoint_id, after)

    def _endpoint_page(
        self,
        request: Request[Any, Any, Any],
        endpoint_id: str,
        after: int | None = None,
        problem: Problem | None = None,
    ) -> Template:
        viewer = viewer_of(request)
        services = services_of(request.app.state)
        hooks = webhooks_of(services)

        def endpoint(s: Session) -> tuple[Any, list[Any]]:
            found = hooks.get(s, _own(viewer.partner_id), endpoint_id)
            rows = hooks.deliveries(
                s, found.partner_id, endpoint_id, after=after, limit=PAGE_SIZE + 1
            )
            s.expunge(found)
            return found, rows

        found, rows = read(request, endpoint)
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        return page(
            "endpoint.html",
            viewer,
            endpoint=found,
            deliveries=rows,
            next_after=rows[-1][0].id if more else None,
            yesterday=(services.clock() - timedelta(days=1)).date().isoformat(),
            sent=request.query_params.get("sent"),
            problem=problem,
            status_code=problem.status if problem else 200,
        )

    @post("/webhooks/{endpoint_id:str}/test", opt=roles("partner"), sync_to_thread=True)
    def test(self, request: Request[Any, Any, Any], endpoint_id: ConsoleId) -> Redirect:
        """Queue a ``ping`` event to the endpoint."""
        viewer = viewer_of(request)
        services = services_of(request.app.state)
        with transaction(services.sessions) as s:
            webhooks_of(services).ping(
                s, _own(viewer.partner_id), endpoint_id, now=services.clock()
            )
        return back(f"/webhooks/{endpoint_id}", sent="ping")

    @post("/webhooks/{endpoint_id:str}/recover", opt=roles("partner"), sync_to_thread=True)
    def recover(
        self, request: Request[Any, Any, Any], endpoint_id: ConsoleId
    ) -> Template | Redirect:
        """Send the endpoint's failed deliveries since a day again; a rule broken (nothing
        is sent) shows the endpoint's page again with the problem."""
        viewer = viewer_of(request)
        services = services_of(request.app.state)
        try:
            since = parse_day(field(form_of(request), "since"), "since")
            with transaction(services.sessions) as s:
                count = webhooks_of(services).recover(
                    s,
                    _own(viewer.partner_id),
                    endpoint_id,
                    since=since or services.clock() - timedelta(days=1),
                    now=services.clock(),
                )
        except ValidationFailed as exc:
            return self._endpoint_page(request, endpoint_id, problem=problem_of(exc))
        return back(f"/webhooks/{endpoint_id}", sent=str(count))
