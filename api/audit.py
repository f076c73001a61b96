"""The audit log at the HTTP edge: every response to an operator or finance key is recorded
(:mod:`coalition.audit`), and operators list the log at ``GET /v1/admin/audit``.

The record is written by a ``before_send`` hook when the response's last body part leaves,
so it sees every route (admin, reports, statements...) and every outcome, failures included,
without a line in any handler. It runs in a transaction of its own: if the database refuses
it (an outage), the failure is logged and the response still goes out; see docs/security.md.
Partner keys and unsigned requests are not audited here (the ledger records what partners do).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Annotated, Literal

import anyio.to_thread
import msgspec
from litestar import Controller
from litestar.params import QueryParameter
from litestar.types import Message, Scope

from api.auth import admin, principal_in, signed
from api.decoding import parse_time
from api.docs import SIGNED
from api.handlers import Caller, reader
from api.pages import Cursor, Limit, decode_cursor, page_out
from api.problems import request_id
from api.runtime import Services, services_of
from api.structs import ID_PATTERN, LINE, AuditEventOut, AuditPage, QueryText
from coalition import audit
from coalition.db import database_unreachable, transaction

log = logging.getLogger("coalition.api")

AUDITED_ROLES = frozenset({"operator", "finance"})
_STATUS_KEY = "coalition_audit_status"


def _outcome(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> str:
    if status < 400:
        replayed = any(n.lower() == b"idempotent-replayed" for n, _ in headers)
        return "replayed" if replayed else "ok"
    try:
        kind = msgspec.json.decode(body).get("type", "")
    except (msgspec.DecodeError, AttributeError):
        kind = ""
    return str(kind).rsplit("/", 1)[-1] or f"http-{status}"


def _action(scope: Scope) -> str:
    raw_path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    target = raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
    return f"{scope.get('method', '')} {target}"


def _write(services: Services, action: audit.Action) -> None:
    try:
        with transaction(services.sessions) as session:
            audit.record(session, action, services.clock())
    except Exception as exc:
        if database_unreachable(exc):
            log.warning("audit: database unavailable; not recorded: %s", action.action)
        else:
            log.exception("audit: could not record %s by key %s", action.action, action.key_id)


async def record_action(message: Message, scope: Scope) -> None:
    """``before_send`` hook: one audit event per response to an operator or finance key."""
    principal = principal_in(scope)
    if principal is None or principal.role not in AUDITED_ROLES:
        return
    state = scope.setdefault("state", {})
    if message["type"] == "http.response.start":
        state[_STATUS_KEY] = (message["status"], list(message.get("headers", [])))
        return
    if message["type"] != "http.response.body" or message.get("more_body", False):
        return
    status, headers = state.pop(_STATUS_KEY, (0, []))
    client = scope.get("client")
    action = audit.Action(
        role=principal.role,
        key_id=principal.key_id,
        action=_action(scope),
        source_address=client[0] if client else None,
        status=status,
        outcome=_outcome(status, headers, bytes(message.get("body", b""))),
        request_id=request_id(scope),
    )
    await anyio.to_thread.run_sync(partial(_write, services_of(scope["app"].state), action))


def _event_out(event: audit.AuditEvent) -> AuditEventOut:
    return AuditEventOut(
        id=event.id,
        at=event.at,
        role=event.role,  # type: ignore[arg-type]
        key_id=event.key_id,
        action=event.action,
        source_address=event.source_address,
        status=event.status,
        outcome=event.outcome,
        request_id=event.request_id,
    )


class AuditController(Controller):
    """``GET /v1/admin/audit``: operator keys."""

    path = "/v1/admin/audit"
    before_request = staticmethod(signed)
    security = SIGNED
    tags = ["operator"]  # noqa: RUF012

    @reader("/", opt=admin())
    def list_audit(  # noqa: PLR0917 (query parameters)
        self,
        caller: Caller,
        key_id: Annotated[str | None, QueryParameter(max_length=64, pattern=ID_PATTERN)] = None,
        role: Annotated[Literal["operator", "finance"] | None, QueryParameter()] = None,
        outcome: Annotated[
            str | None,
            QueryParameter(
                max_length=64,
                pattern=LINE,
                description="ok, replayed or a problem type such as validation",
            ),
        ] = None,
        since: QueryText = None,
        until: QueryText = None,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> AuditPage:
        """Operator and finance actions, newest first, filtered (keyset pagination)."""
        after, before = parse_time(since, "since"), parse_time(until, "until")
        before_id = decode_cursor(cursor, "aud")
        found = caller.services.reads.run(
            lambda s: audit.list_events(
                s,
                key_id=key_id,
                role=role,
                outcome=outcome,
                since=after,
                until=before,
                before_id=before_id,
                limit=limit,
            )
        )
        return page_out(AuditPage, found, _event_out)
