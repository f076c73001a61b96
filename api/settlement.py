"""The settlement endpoints: a partner's statements and disputes (``/v1/statements``, scope
``statements``), and the operator's and finance's close, statements, disputes, periods and
reports (``/v1/admin``). Each handler maps HTTP to one call of :mod:`settlement`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Controller, Response
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import admin, partner, signed
from api.docs import SIGNED, ExportOperation
from api.handlers import Call, Caller, operation, reader
from api.pages import Cursor, Limit, decode_cursor, page_out
from api.settlement_structs import (
    ClosedOut,
    CloseRequest,
    DisputeCreate,
    DisputeList,
    DisputeResolve,
    PeriodOut,
    PeriodPage,
    SettleRequest,
    StatementEventList,
    StatementEventOut,
    StatementPage,
    UnbilledOut,
)
from api.structs import EmptyBody, IdPath, IdQuery, IdQueryRequired
from coalition.db import transaction
from partners.signatures import Principal
from settlement import reports, workflow
from settlement.canonical import csv_export, json_export
from settlement.close import close_in
from settlement.document import StatementDocument, StatementStatus
from settlement.models import Period, Statement
from settlement.statements import StatementSummary, document_of, summary_out

PathId = IdPath
#: The problems a write of the settlement API may answer.
_WRITE_PROBLEMS = (400, 403, 404, 409, 413, 422)
ExportFormat = Annotated[Literal["json", "csv"], QueryParameter(description="`json` or `csv`.")]


def actor_of(principal: Principal) -> workflow.Actor:
    """The workflow's actor for a verified key."""
    return workflow.Actor(principal.key_id, principal.role, principal.partner_id)


def document_response(statement: Statement) -> Response[StatementDocument]:
    """The signed document, exactly as signed (its canonical JSON plus hash and signature)."""
    content: Any = json_export(document_of(statement))
    return Response(content, media_type="application/json")


def period_out(period: Period) -> PeriodOut:
    """A closed period."""
    return PeriodOut(
        id=period.id,
        start=period.start_at,
        end=period.end_at,
        closed_at=period.closed_at,
        cycle=period.cycle,  # type: ignore[arg-type]
    )


def export_response(statement: Statement, format: str) -> Response[bytes]:
    """The signed export of a statement as a download (JSON or CSV): what the API and the
    console both serve."""
    document = document_of(statement)
    if format == "csv":
        # Litestar adds "; charset=utf-8" (the response's encoding) to every text/* type.
        content, media, suffix = csv_export(document), "text/csv", "csv"
    else:
        content, media, suffix = json_export(document), "application/json", "json"
    return Response(
        content,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{statement.id}.{suffix}"'},
    )


def _summary_in(session: Session, statement: Statement) -> StatementSummary:
    return summary_out(statement, reports.get_period(session, statement.period_id))


def _page(s: Session, **query: Any) -> StatementPage:
    page = workflow.list_statements(s, **query)
    ids = {row.period_id for row in page.rows}
    periods = {p.id: p for p in s.scalars(select(Period).where(Period.id.in_(ids)))}
    return page_out(StatementPage, page, lambda row: summary_out(row, periods[row.period_id]))


class StatementsController(Controller):
    """A partner's statements and disputes (scope ``statements``)."""

    path = "/v1/statements"
    before_request = staticmethod(signed)
    security = SIGNED
    tags = ["partner"]  # noqa: RUF012

    @reader("/", opt=partner("statements"))
    def list_statements(
        self,
        caller: Caller,
        status: Annotated[StatementStatus | None, QueryParameter()] = None,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> StatementPage:
        """The partner's statements, newest first (keyset pagination)."""
        with transaction(caller.services.sessions) as s:
            return _page(
                s,
                partner_id=caller.partner_id,
                status=status,
                before_id=decode_cursor(cursor, "stmt"),
                limit=limit,
            )

    @reader("/{statement_id:str}", opt=partner("statements"), problems=(403, 404, 422))
    def get_statement(self, caller: Caller, statement_id: PathId) -> Response[StatementDocument]:
        """One of the partner's statements: exactly the signed document."""
        partner_id = caller.partner_id
        # signed once, never changed: a replica's copy is the primary's (or not there yet)
        return caller.services.reads.run(
            lambda s: document_response(
                workflow.get_statement(s, statement_id, partner_id=partner_id)
            )
        )

    @reader(
        "/{statement_id:str}/export",
        opt=partner("statements"),
        problems=(403, 404, 422),
        operation_class=ExportOperation,
    )
    def export(
        self, caller: Caller, statement_id: PathId, format: ExportFormat = "json"
    ) -> Response[bytes]:
        """The signed export: JSON (the document) or CSV (lines, then ``#`` rows with the
        totals, content hash and signature); verify with ``coalition statements verify``."""
        partner_id = caller.partner_id
        return caller.services.reads.run(
            lambda s: export_response(
                workflow.get_statement(s, statement_id, partner_id=partner_id), format
            )
        )

    @operation(
        "/{statement_id:str}/acknowledge",
        opt=partner("statements"),
        body=EmptyBody,
        empty_as_object=True,
        status_code=200,
    )
    def acknowledge(self, call: Call[EmptyBody], statement_id: PathId) -> StatementSummary:
        """The partner has checked its statement (``issued`` -> ``acknowledged``)."""
        done = workflow.acknowledge(
            call.session,
            statement_id,
            actor_of(call.principal),
            secret_key=call.services.settings.secret_key,
            now=call.services.clock(),
        )
        return _summary_in(call.session, done)

    @operation(
        "/{statement_id:str}/disputes",
        opt=partner("statements"),
        body=DisputeCreate,
    )
    def dispute(self, call: Call[DisputeCreate], statement_id: PathId) -> workflow.DisputeOut:
        """Dispute the statement, optionally naming lines by transaction id."""
        made = workflow.open_dispute(
            call.session,
            statement_id,
            actor_of(call.principal),
            reason=call.data.reason,
            transaction_ids=list(call.data.transaction_ids or []),
            secret_key=call.services.settings.secret_key,
            now=call.services.clock(),
        )
        statement = workflow.get_statement(call.session, statement_id, partner_id=None)
        return workflow.dispute_out(made, statement.currency)

    @reader("/{statement_id:str}/disputes", opt=partner("statements"), problems=(403, 404, 422))
    def list_disputes(self, caller: Caller, statement_id: PathId) -> DisputeList:
        """The disputes of one of the partner's statements."""
        partner_id = caller.partner_id
        with transaction(caller.services.sessions) as s:
            statement = workflow.get_statement(s, statement_id, partner_id=partner_id)
            found = workflow.disputes_of(s, statement_id, partner_id=partner_id)
            return DisputeList(data=[workflow.dispute_out(d, statement.currency) for d in found])


class SettlementAdminController(Controller):
    """The close, every partner's statements, disputes, periods and reports (operator keys;
    finance keys read, and settle)."""

    path = "/v1/admin"
    before_request = staticmethod(signed)
    security = SIGNED
    tags = ["operator"]  # noqa: RUF012

    @operation(
        "/settlement/close",
        opt=admin(),
        body=CloseRequest,
        empty_as_object=True,
        problems=(400, 403, 409, 413, 422),
        responses={200: ResponseSpec(data_container=ClosedOut, description="Closed before.")},
    )
    def close(self, call: Call[CloseRequest]) -> ClosedOut:
        """Close the open period at ``cut_off`` (default: the latest scheduled cut-off that
        has passed; not in the future). The same cut-off twice closes once (``200``);
        an off-cycle cut-off is allowed and the next period starts there."""
        settings, principal = call.services.settings, call.principal
        closed = close_in(
            call.session,
            secret_key=settings.secret_key,
            cycle=settings.settlement_cycle,
            tz=settings.tz,
            now=call.services.clock(),
            cut_off=call.data.cut_off,
            key_id=principal.key_id,
            role=principal.role,
        )
        call.status = 201 if closed.created else 200
        return ClosedOut(
            period=period_out(closed.period),
            created=closed.created,
            statements=[summary_out(s, closed.period) for s in closed.statements],
            unbilled=[
                UnbilledOut(u.transaction_id, u.partner_id, u.kind, u.points, u.reason)  # type: ignore[arg-type]
                for u in closed.unbilled
            ],
        )

    @reader("/statements", opt=admin("operator", "finance"))
    def list_statements(  # noqa: PLR0917 (query parameters)
        self,
        caller: Caller,
        period_id: IdQuery = None,
        partner_id: IdQuery = None,
        status: Annotated[StatementStatus | None, QueryParameter()] = None,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> StatementPage:
        """Every partner's statements, newest first; filter by period, partner, status."""
        before_id = decode_cursor(cursor, "stmt")
        return caller.services.reads.run(
            lambda s: _page(
                s,
                partner_id=partner_id,
                status=status,
                period_id=period_id,
                before_id=before_id,
                limit=limit,
            )
        )

    @reader(
        "/statements/{statement_id:str}", opt=admin("operator", "finance"), problems=(403, 404, 422)
    )
    def get_statement(self, caller: Caller, statement_id: PathId) -> Response[StatementDocument]:
        """Any partner's statement: exactly the signed document."""
        return caller.services.reads.run(
            lambda s: document_response(workflow.get_statement(s, statement_id, partner_id=None))
        )

    @reader(
        "/statements/{statement_id:str}/export",
        opt=admin("operator", "finance"),
        problems=(403, 404, 422),
        operation_class=ExportOperation,
    )
    def export(
        self, caller: Caller, statement_id: PathId, format: ExportFormat = "json"
    ) -> Response[bytes]:
        """Any partner's signed export (JSON or CSV)."""
        return caller.services.reads.run(
            lambda s: export_response(
                workflow.get_statement(s, statement_id, partner_id=None), format
            )
        )

    @reader(
        "/statements/{statement_id:str}/events",
        opt=admin("operator", "finance"),
        problems=(403, 404, 422),
    )
    def events(self, caller: Caller, statement_id: PathId) -> StatementEventList:
        """The statement's status changes: from, to, when, which key."""

        def answer(s: Session) -> StatementEventList:
            workflow.get_statement(s, statement_id, partner_id=None)
            rows = workflow.history(s, statement_id)
            return StatementEventList(
                data=[
                    StatementEventOut(
                        from_status=e.from_status,  # type: ignore[arg-type]
                        to_status=e.to_status,  # type: ignore[arg-type]
                        at=e.at,
                        key_id=e.key_id,
                        role=e.role,
                        note=e.note,
                    )
                    for e in rows
                ]
            )

        return caller.services.reads.run(answer)

    @operation(
        "/statements/{statement_id:str}/settle",
        opt=admin("operator", "finance"),
        body=SettleRequest,
        status_code=200,
    )
    def settle(self, call: Call[SettleRequest], statement_id: PathId) -> StatementSummary:
        """Record the payment that settled the statement."""
        done = workflow.settle(
            call.session,
            statement_id,
            actor_of(call.principal),
            payment_reference=call.data.payment_reference,
            paid_at=call.data.paid_at,
            secret_key=call.services.settings.secret_key,
            now=call.services.clock(),
        )
        return _summary_in(call.session, done)

    @reader(
        "/statements/{statement_id:str}/disputes",
        opt=admin("operator", "finance"),
        problems=(403, 404, 422),
    )
    def list_disputes(self, caller: Caller, statement_id: PathId) -> DisputeList:
        """Any statement's disputes."""

        def answer(s: Session) -> DisputeList:
            statement = workflow.get_statement(s, statement_id, partner_id=None)
            found = workflow.disputes_of(s, statement_id, partner_id=None)
            return DisputeList(data=[workflow.dispute_out(d, statement.currency) for d in found])

        return caller.services.reads.run(answer)

    @operation(
        "/disputes/{dispute_id:str}/resolve",
        opt=admin(),
        body=DisputeResolve,
        status_code=200,
    )
    def resolve(self, call: Call[DisputeResolve], dispute_id: PathId) -> workflow.DisputeOut:
        """Resolve a dispute; an ``adjustment`` is billed on the partner's next statement."""
        data = call.data
        done = workflow.resolve(
            call.session,
            dispute_id,
            actor_of(call.principal),
            outcome=data.outcome,
            note=data.note,
            adjustment=data.adjustment,
            secret_key=call.services.settings.secret_key,
            now=call.services.clock(),
        )
        statement = workflow.get_statement(call.session, done.statement_id, partner_id=None)
        return workflow.dispute_out(done, statement.currency)

    @reader("/periods", opt=admin("operator", "finance"))
    def list_periods(self, caller: Caller, limit: Limit = 100, cursor: Cursor = None) -> PeriodPage:
        """Closed periods, the latest first."""
        before_id = decode_cursor(cursor, "per")

        return caller.services.reads.run(
            lambda s: page_out(
                PeriodPage, reports.list_periods(s, before_id=before_id, limit=limit), period_out
            )
        )

    @reader(
        "/periods/{period_id:str}/summary",
        opt=admin("operator", "finance"),
        problems=(403, 404, 422),
    )
    def period_summary(self, caller: Caller, period_id: PathId) -> reports.PeriodSummary:
        """Money per currency (billed, reimbursed, margin), the points roll-forward,
        breakage, active members and the cross-brand share of a closed period."""
        return caller.services.reads.run(lambda s: reports.summary(s, period_id).document())

    @reader("/reports/cross-brand", opt=admin("operator", "finance"), problems=(403, 404, 422))
    def cross_brand(
        self,
        caller: Caller,
        period_id: IdQueryRequired,
    ) -> reports.CrossBrandReport:
        """Points issued by each partner (rows) and redeemed at each (columns) in a period."""

        def answer(s: Session) -> reports.CrossBrandReport:
            period = reports.get_period(s, period_id)
            return reports.cross_brand(s, period_id).document(period)

        return caller.services.reads.run(answer)
