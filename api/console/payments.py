"""Finance's payment pages: payment runs (create, download the files, cancel), the
reconciliation queue (import the bank's statement, match an entry to a statement or dismiss
it with a note), and partners' bank details with their pending approvals, shown loudly.

Each action is one call of :mod:`settlement.payments`, the functions the API calls; a console
session acts as the finance key it was signed in for (``coalition console-link --role finance
--key KEY``), which four eyes count as its person (docs/payments.md).
"""

from __future__ import annotations

from datetime import date
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.response import Redirect, Template

from api.console.statements import ConsoleId, actor_of
from api.console.web import STAFF, back, form_of, page, roles, signed_in, viewer_of
from api.payments import FileName, payment_file_response
from api.runtime import services_of
from coalition.db import transaction
from coalition.errors import ValidationFailed
from partners.queries import list_partners, partner_names
from settlement.bankfiles import MAX_BANK_FILE_BYTES
from settlement.payments import bank_accounts, reconcile, runs

#: An uploaded bank statement and the rest of its form.
UPLOAD_LIMIT = MAX_BANK_FILE_BYTES + 64 * 1024


def _text(form: Any, name: str) -> str | None:
    value = str(form.get(name, "")).strip()
    return value or None


def _day(raw: str | None, field: str) -> date | None:
    if raw is None:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ValidationFailed.at(field, "a day, YYYY-MM-DD") from None


class PaymentPages(Controller):
    """``/console/payments``, ``/console/reconciliation``, ``/console/bank-accounts``."""

    path = "/console"
    guards = [signed_in]  # noqa: RUF012 (Litestar's layer attribute)

    # --- payment runs ----------------------------------------------------------------------

    @get("/payments", opt=roles(*STAFF), sync_to_thread=True)
    def payment_runs(self, request: Request[Any, Any, Any]) -> Template:
        """The latest runs, and a form to make one."""
        viewer = viewer_of(request)
        services = services_of(request.app.state)
        with transaction(services.sessions) as s:
            found = runs.list_runs(s, limit=100)
            pending = bank_accounts.pending_changes(s)
            names = partner_names(s, {p.partner_id for p in pending})
        return page(
            "payments.html",
            viewer,
            runs=found,
            pending=pending,
            names=names,
            today=services.clock().date().isoformat(),
        )

    @post("/payments", opt=roles("finance"), sync_to_thread=True)
    def create_run(self, request: Request[Any, Any, Any]) -> Redirect:
        """Make a run of every acknowledged statement in no live run."""
        services = services_of(request.app.state)
        form = form_of(request)
        with transaction(services.sessions) as s:
            made = runs.create_run(
                s,
                actor_of(viewer_of(request)),
                statement_ids=None,
                execution_date=_day(_text(form, "execution_date"), "execution_date"),
                settings=services.settings,
                now=services.clock(),
            )
            run_id = made.run.id
        return back(f"/payments/{run_id}")

    @get("/payments/{run_id:str}", opt=roles(*STAFF), sync_to_thread=True)
    def payment_run(self, request: Request[Any, Any, Any], run_id: ConsoleId) -> Template:
        """A run: its payments, skipped statements (with why) and files."""
        viewer = viewer_of(request)
        services = services_of(request.app.state)
        with transaction(services.sessions) as s:
            view = runs.get_run(s, run_id)
            names = partner_names(s, {i.partner_id for i in view.items})
        return page("payment_run.html", viewer, view=view, data=runs.run_out(view), names=names)

    @get("/payments/{run_id:str}/files/{name:str}", opt=roles(*STAFF), sync_to_thread=True)
    def payment_file(
        self, request: Request[Any, Any, Any], run_id: ConsoleId, name: FileName
    ) -> Response[bytes]:
        """A file of the run, byte for byte the API's."""
        return payment_file_response(services_of(request.app.state), run_id, name)

    @post("/payments/{run_id:str}/cancel", opt=roles("finance"), sync_to_thread=True)
    def cancel_run(self, request: Request[Any, Any, Any], run_id: ConsoleId) -> Redirect:
        """Cancel the run: its statements may go into a later one."""
        services = services_of(request.app.state)
        form = form_of(request)
        with transaction(services.sessions) as s:
            runs.cancel_run(
                s,
                run_id,
                actor_of(viewer_of(request)),
                note=_text(form, "note"),
                now=services.clock(),
            )
        return back(f"/payments/{run_id}")

    # --- reconciliation --------------------------------------------------------------------

    def _queue(self, request: Request[Any, Any, Any], **extra: Any) -> Template:
        viewer = viewer_of(request)
        services = services_of(request.app.state)
        with transaction(services.sessions) as s:
            waiting = reconcile.queue(s, limit=200).rows
        return page(
            "reconciliation.html",
            viewer,
            entries=[reconcile.entry_out(e) for e in waiting],
            **extra,
        )

    @get("/reconciliation", opt=roles(*STAFF), sync_to_thread=True)
    def reconciliation(self, request: Request[Any, Any, Any]) -> Template:
        """Bank entries waiting for finance, with their reasons."""
        return self._queue(request)

    @post(
        "/reconciliation/import",
        opt=roles("finance"),
        sync_to_thread=True,
        request_max_body_size=UPLOAD_LIMIT,
        status_code=200,
    )
    def import_statement(self, request: Request[Any, Any, Any]) -> Template:
        """Import the bank's statement file (camt.053 or MT940) and reconcile it."""
        services = services_of(request.app.state)
        upload = form_of(request).get("file")
        if not isinstance(upload, UploadFile):
            raise ValidationFailed.at("file", "choose the bank's statement file")
        data = upload.file.read(MAX_BANK_FILE_BYTES + 1)
        with transaction(services.sessions) as s:
            done = reconcile.import_statement(
                s,
                data,
                actor_of(viewer_of(request)),
                secret_key=services.settings.secret_key,
                now=services.clock(),
            )
            result = reconcile.imported_out(done)
        return self._queue(request, imported=result, file_name=upload.filename)

    @post("/reconciliation/{entry_id:str}/resolve", opt=roles("finance"), sync_to_thread=True)
    def resolve(self, request: Request[Any, Any, Any], entry_id: ConsoleId) -> Redirect:
        """Match the entry to a statement (which it settles) or dismiss it, with a note."""
        services = services_of(request.app.state)
        form = form_of(request)
        dismiss = form.get("action") == "dismiss"
        with transaction(services.sessions) as s:
            reconcile.resolve(
                s,
                entry_id,
                actor_of(viewer_of(request)),
                statement_id=None if dismiss else _text(form, "statement_id"),
                note=str(form.get("note", "")),
                secret_key=services.settings.secret_key,
                now=services.clock(),
            )
        return back("/reconciliation")

    # --- bank details ----------------------------------------------------------------------

    @get("/bank-accounts", opt=roles(*STAFF), sync_to_thread=True)
    def bank_accounts_page(self, request: Request[Any, Any, Any]) -> Template:
        """Every partner's bank details; changes waiting for approval first and loudly."""
        viewer = viewer_of(request)
        services = services_of(request.app.state)
        with transaction(services.sessions) as s:
            found = list_partners(s, limit=500).rows
            rows = [(p, bank_accounts.details(s, p.id)) for p in found]
        rows.sort(key=lambda r: (r[1].pending is None, r[0].name))
        return page("bank_accounts.html", viewer, rows=rows)

    def _bank_page(self, request: Request[Any, Any, Any], partner_id: str) -> Template:
        viewer = viewer_of(request)
        services = services_of(request.app.state)
        with transaction(services.sessions) as s:
            found = bank_accounts.details(s, partner_id)
            name = partner_names(s, [partner_id]).get(partner_id, partner_id)
        return page(
            "bank_account.html",
            viewer,
            partner_id=partner_id,
            partner_name=name,
            details=found,
            me=viewer.key_id,
        )

    @get("/bank-accounts/{partner_id:str}", opt=roles(*STAFF), sync_to_thread=True)
    def bank_account(self, request: Request[Any, Any, Any], partner_id: ConsoleId) -> Template:
        """A partner's active details, the change waiting for approval, the forms."""
        return self._bank_page(request, partner_id)

    @post("/bank-accounts/{partner_id:str}", opt=roles("finance"), sync_to_thread=True)
    def propose(self, request: Request[Any, Any, Any], partner_id: ConsoleId) -> Redirect:
        """Propose new details (pending until another finance key approves)."""
        services = services_of(request.app.state)
        form = form_of(request)
        now = services.clock()
        checked = bank_accounts.check_details(
            holder=str(form.get("holder", "")),
            iban=str(form.get("iban", "")),
            bic=_text(form, "bic"),
            mandate_id=_text(form, "mandate_id"),
            mandate_signed_on=_day(_text(form, "mandate_signed_on"), "mandate_signed_on"),
            today=now.date(),
        )
        with transaction(services.sessions) as s:
            bank_accounts.propose(s, partner_id, actor_of(viewer_of(request)), checked, now=now)
        return back(f"/bank-accounts/{partner_id}")

    @post("/bank-accounts/{partner_id:str}/approve", opt=roles("finance"), sync_to_thread=True)
    def approve(self, request: Request[Any, Any, Any], partner_id: ConsoleId) -> Redirect:
        """Approve the pending change (not the key that proposed it)."""
        services = services_of(request.app.state)
        with transaction(services.sessions) as s:
            bank_accounts.approve(s, partner_id, actor_of(viewer_of(request)), now=services.clock())
        return back(f"/bank-accounts/{partner_id}")
