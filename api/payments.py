"""The payment endpoints (finance keys; operator keys read): partners' bank details under
four eyes, payment runs and their ISO 20022 files, bank statements in, the reconciliation
queue. Each handler maps HTTP to one call of :mod:`settlement.payments`."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, put
from litestar.params import PathParameter, QueryParameter, RawBody

from api.auth import admin, principal_of, signed
from api.decoding import decode
from api.docs import SIGNED, body, problems
from api.handlers import Call, Caller, operation, reader
from api.pages import Cursor, Limit, decode_cursor, page_out
from api.payments_structs import (
    BankAccountPut,
    PaymentRunCancel,
    PaymentRunCreate,
    PaymentRunList,
    PaymentRunSummary,
    ReconciliationPage,
    ResolveEntry,
)
from api.runtime import Services, services_of
from api.settlement import actor_of
from api.structs import EmptyBody, IdPath, full_match
from coalition.db import transaction
from coalition.errors import ValidationFailed
from settlement.bankfiles import MAX_BANK_FILE_BYTES
from settlement.payments import bank_accounts, reconcile, runs
from settlement.payments.bank_accounts import BankAccountOut
from settlement.payments.reconcile import BankEntryOut, BankStatementImported
from settlement.payments.runs import PaymentRunOut

FileName = Annotated[
    str,
    PathParameter(
        min_length=1,
        max_length=80,
        pattern=full_match(r"[A-Za-z0-9_.-]{1,80}", "a file name: 1 to 80 of [A-Za-z0-9_.-]"),
    ),
]
#: Media types a bank statement body may carry (camt.053 is XML; MT940 is text).
BANK_FILE_TYPES = ("application/xml", "text/xml", "text/plain", "application/octet-stream")


def payment_file_response(services: Services, run_id: str, name: str) -> Response[bytes]:
    """A payment run's file as an attachment, byte for byte as stored (the API's and the
    console's download)."""
    with transaction(services.sessions) as s:
        found = runs.get_file(s, run_id, name)
    return Response(
        found.content,
        media_type="application/xml",
        headers={"Content-Disposition": f'attachment; filename="{found.name}"'},
    )


def _media_type(request: Request[Any, Any, Any]) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class PaymentsController(Controller):
    """Bank details, payment runs, bank statements and reconciliation under ``/v1/admin``."""

    path = "/v1/admin"
    before_request = staticmethod(signed)
    security = SIGNED
    tags = ["operator"]  # noqa: RUF012

    # --- bank details (four eyes) --------------------------------------------------------

    @put(
        "/partners/{partner_id:str}/bank-account",
        opt=admin("finance"),
        dependencies=body(BankAccountPut),
        status_code=202,
        responses=problems(403, 404, 413, 422),
        sync_to_thread=True,
    )
    def propose_bank_account(
        self, request: Request[Any, Any, Any], partner_id: IdPath, body: RawBody
    ) -> BankAccountOut:
        """Propose new bank details: ``pending`` until another finance key approves them;
        the partner is told (``partner.bank_account_changed``)."""
        services = services_of(request.app.state)
        data = decode(body, BankAccountPut)
        now = services.clock()
        checked = bank_accounts.check_details(
            holder=data.holder,
            iban=data.iban,
            bic=data.bic,
            mandate_id=data.mandate_id,
            mandate_signed_on=data.mandate_signed_on,
            today=now.date(),
        )
        with transaction(services.sessions) as s:
            bank_accounts.propose(s, partner_id, actor_of(principal_of(request)), checked, now=now)
            return bank_accounts.details_out(bank_accounts.details(s, partner_id), "pending")

    @reader(
        "/partners/{partner_id:str}/bank-account",
        opt=admin("operator", "finance"),
        problems=(403, 404, 422),
    )
    def get_bank_account(self, caller: Caller, partner_id: IdPath) -> BankAccountOut:
        """The partner's active bank details and the change waiting for approval, if any."""
        with transaction(caller.services.sessions) as s:
            found = bank_accounts.details(s, partner_id)
            status = "active" if found.active is not None else "none"
            return bank_accounts.details_out(
                found, "pending" if found.pending is not None else status
            )

    @operation(
        "/partners/{partner_id:str}/bank-account/approve",
        opt=admin("finance"),
        body=EmptyBody,
        empty_as_object=True,
        status_code=200,
    )
    def approve_bank_account(self, call: Call[EmptyBody], partner_id: IdPath) -> BankAccountOut:
        """A second finance key approves the pending change: it becomes ``active``. The key
        that proposed it gets ``403 four-eyes``."""
        session = call.session
        bank_accounts.approve(
            session, partner_id, actor_of(call.principal), now=call.services.clock()
        )
        return bank_accounts.details_out(bank_accounts.details(session, partner_id), "active")

    # --- payment runs --------------------------------------------------------------------

    @operation(
        "/payment-runs",
        opt=admin("finance"),
        body=PaymentRunCreate,
        empty_as_object=True,
        problems=(400, 403, 409, 413, 422),
    )
    def create_run(self, call: Call[PaymentRunCreate]) -> PaymentRunOut:
        """A payment run: credit transfers where the operator pays, SEPA direct debits where a
        partner with a mandate pays, the rest skipped with the reason; its files are built
        and validated against their XSD now."""
        data = call.data
        made = runs.create_run(
            call.session,
            actor_of(call.principal),
            statement_ids=None if data.statement_ids is None else list(data.statement_ids),
            execution_date=data.execution_date,
            settings=call.services.settings,
            now=call.services.clock(),
        )
        return runs.run_out(made)

    @reader("/payment-runs", opt=admin("operator", "finance"))
    def list_runs(
        self,
        caller: Caller,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    ) -> PaymentRunList:
        """The latest payment runs, newest first."""
        with transaction(caller.services.sessions) as s:
            found = runs.list_runs(s, limit=limit)
            return PaymentRunList(
                data=[
                    PaymentRunSummary(
                        id=r.id,
                        status=r.status,  # type: ignore[arg-type]
                        execution_date=r.execution_date,
                        created_at=r.created_at,
                    )
                    for r in found
                ]
            )

    @reader(
        "/payment-runs/{run_id:str}", opt=admin("operator", "finance"), problems=(403, 404, 422)
    )
    def get_run(self, caller: Caller, run_id: IdPath) -> PaymentRunOut:
        """A payment run: its payments, skipped statements and files."""
        with transaction(caller.services.sessions) as s:
            return runs.run_out(runs.get_run(s, run_id))

    @reader(
        "/payment-runs/{run_id:str}/files/{name:str}",
        opt=admin("operator", "finance"),
        problems=(403, 404, 422),
        media_type="application/xml",
    )
    def get_file(self, caller: Caller, run_id: IdPath, name: FileName) -> Response[bytes]:
        """A file of the run, byte for byte as built (valid against its ISO 20022 XSD)."""
        return payment_file_response(caller.services, run_id, name)

    @operation(
        "/payment-runs/{run_id:str}/cancel",
        opt=admin("finance"),
        body=PaymentRunCancel,
        empty_as_object=True,
        status_code=200,
    )
    def cancel_run(self, call: Call[PaymentRunCancel], run_id: IdPath) -> PaymentRunOut:
        """Cancel a run (its statements may go into a later run); not once one of its
        statements is settled."""
        done = runs.cancel_run(
            call.session,
            run_id,
            actor_of(call.principal),
            note=call.data.note,
            now=call.services.clock(),
        )
        return runs.run_out(done)

    # --- bank statements and reconciliation ----------------------------------------------

    @operation(
        "/bank-statements",
        opt=admin("finance"),
        body=None,
        status_code=200,
        problems=(400, 403, 409, 413, 422),
        request_max_body_size=MAX_BANK_FILE_BYTES,
    )
    def import_statement(self, call: Call[bytes]) -> BankStatementImported:
        """Import a bank account statement (the camt.053 document as the body,
        ``Content-Type: application/xml``; up to 16 MiB) and reconcile it: entries that pay a
        statement exactly settle it, the rest wait in the reconciliation queue. The same file
        again changes nothing (``"duplicate": true``)."""
        if _media_type(call.request) not in BANK_FILE_TYPES:
            raise ValidationFailed.at(
                "header.content-type", "application/xml (a camt.053 document)"
            )
        done = reconcile.import_statement(
            call.session,
            call.data,
            actor_of(call.principal),
            secret_key=call.services.settings.secret_key,
            now=call.services.clock(),
        )
        return reconcile.imported_out(done)

    @reader("/reconciliation", opt=admin("operator", "finance"))
    def reconciliation(
        self,
        caller: Caller,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> ReconciliationPage:
        """Bank entries waiting for finance, newest first, each with its reason."""
        with transaction(caller.services.sessions) as s:
            found = reconcile.queue(s, limit=limit, before_id=decode_cursor(cursor, "bke"))
            return page_out(ReconciliationPage, found, reconcile.entry_out)

    @operation(
        "/reconciliation/{entry_id:str}/resolve",
        opt=admin("finance"),
        body=ResolveEntry,
        status_code=200,
    )
    def resolve(self, call: Call[ResolveEntry], entry_id: IdPath) -> BankEntryOut:
        """Resolve a waiting entry: match it to ``statement_id`` (which it settles, the entry
        as its payment) or dismiss it; ``note`` says why."""
        done = reconcile.resolve(
            call.session,
            entry_id,
            actor_of(call.principal),
            statement_id=call.data.statement_id,
            note=call.data.note,
            secret_key=call.services.settings.secret_key,
            now=call.services.clock(),
        )
        return reconcile.entry_out(done)
