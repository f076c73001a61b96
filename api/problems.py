"""RFC 9457 problem documents: the one place where errors become HTTP responses.

Every domain error (:class:`~coalition.errors.CoalitionError`) has a ``code``; here the code
gets its HTTP status and becomes ``{"type": "/problems/<code>", "title", "status", "detail",
"request_id", ...extra members}``. Litestar's own HTTP errors (no such route, method not
allowed, body too large, query validation) and unexpected failures are mapped the same way.
An unexpected failure is a ``500`` carrying an ``error_id`` that the server log names next to
the stack trace; nothing else of it (no trace, SQL or secret) reaches the client.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from html import escape
from typing import Annotated, Any

import msgspec
from litestar import MediaType, Request, Response, get
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.handlers import HTTPRouteHandler
from litestar.params import PathParameter
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE
from litestar.types import ExceptionHandlersMap, Message, Scope

from api.structs import explain
from coalition.db import database_unreachable
from coalition.errors import CoalitionError, ValidationFailed

log = logging.getLogger("coalition.api")

PROBLEM_JSON = "application/problem+json"
REQUEST_ID_HEADER = "X-Request-Id"
_STATE_KEY = "coalition_request_id"
#: Scope state set when the client disconnected before its request was complete.
CLIENT_GONE_KEY = "coalition_client_gone"
#: An ``X-Request-Id`` a client or proxy sends is kept when it looks like an id.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{8,128}")


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of problem: its HTTP status, title and what it means."""

    status: int
    title: str
    meaning: str


#: Every problem ``type`` the API answers with (``/problems/<code>``).
KINDS: dict[str, Kind] = {
    "validation": Kind(
        422,
        "The request is not valid",
        "The body, a path or a query parameter breaks the documented shape or a rule; "
        "`errors` lists each field (`$.amount`) with what is wrong. Nothing was changed.",
    ),
    "insufficient-points": Kind(
        409,
        "Not enough points",
        "The member's available points (balance less held points) do not cover the burn or "
        "hold; `available` and `requested` say by how much. Nothing was changed.",
    ),
    "burn-cap-exceeded": Kind(
        422,
        "Points may not pay this much of the basket",
        "The burn is worth more than the partner's `max_burn_share` of `basket_amount`; "
        "`max_amount` is the most points may pay.",
    ),
    "currency-mismatch": Kind(
        422,
        "Currency does not match the partner's currency",
        "A partner earns and burns in its own currency only; `expected` names it.",
    ),
    "unknown-member": Kind(404, "No such member", "No member has this id."),
    "duplicate-reference": Kind(
        409,
        "This reference was already used",
        "The partner already used this `reference` for this operation; `transaction_id` (or "
        "`hold_id`) names what it was used for. Look that up instead of retrying.",
    ),
    "idempotency-key-missing": Kind(
        400,
        "Idempotency-Key header required",
        "Every POST under /v1 needs an `Idempotency-Key` header of 1-255 visible ASCII "
        "characters (a UUID is a good choice); it is missing or malformed.",
    ),
    "idempotency-key-reused": Kind(
        422,
        "Idempotency-Key was used with a different request",
        "The key was already used with another method, path or body. Use a new key for a new "
        "request.",
    ),
    "idempotency-key-in-use": Kind(
        409,
        "A request with this Idempotency-Key is still running",
        "The first request with this key has not finished; retry after `Retry-After` seconds "
        "to get its response.",
    ),
    "hold-not-active": Kind(
        409,
        "The hold is not active",
        "The hold was already captured, voided or has expired (`hold_status` says which).",
    ),
    "reversal-exceeds-original": Kind(
        409,
        "Reversal exceeds what is left of the original",
        "Reversals of a transaction may add up to its points at most; `remaining_points` is "
        "what is left.",
    ),
    "partner-not-active": Kind(
        403,
        "The partner is not active",
        "The partner is suspended, or has no rate card in force yet.",
    ),
    "statement-closed": Kind(
        409, "The statement can no longer change", "The statement is settled or closed."
    ),
    "signature-invalid": Kind(
        401,
        "The request signature is not valid",
        "The request's HTTP Message Signature (RFC 9421) did not verify; `reason` names the "
        "check that failed: missing-signature, malformed-signature, unknown-key, revoked-key, "
        "expired-key, alg-mismatch, missing-component, digest-missing, digest-mismatch, stale, "
        "future, expired-signature, replayed-nonce, bad-signature, wrong-host (the request names "
        "a host that is not this service's) or replayed-signature (a POST's signature already "
        "used with another Idempotency-Key). See docs/signing.md.",
    ),
    "forbidden": Kind(
        403,
        "This key may not do that",
        "The key is valid but lacks the scope or role this endpoint needs.",
    ),
    "not-found": Kind(
        404,
        "Not found",
        "No such resource, or it belongs to another partner (which looks the same).",
    ),
    "conflict": Kind(
        409, "The request conflicts with the current state", "See `detail` for what conflicts."
    ),
    "four-eyes": Kind(
        403,
        "Another person must approve this",
        "A change of a partner's bank details becomes active only when a second finance key "
        "approves it; the key that proposed it (or a console session signed in for that key) "
        "may not. Ask a colleague with another finance key.",
    ),
    "payments-not-configured": Kind(
        409,
        "The operator's bank account is not configured",
        "Payment files need the operator's own account: set COALITION_OPERATOR_NAME, "
        "COALITION_OPERATOR_IBAN, COALITION_OPERATOR_BIC and, for direct debits, "
        "COALITION_SEPA_CREDITOR_ID; `detail` names what is missing.",
    ),
    "method-not-allowed": Kind(
        405, "Method not allowed", "The path exists but does not accept this method."
    ),
    "payload-too-large": Kind(
        413,
        "The request body is too large",
        "Request bodies may be at most 64 KiB (512 KiB for `POST /v1/earn-batches`, 16 MiB "
        "for a bank statement, `POST /v1/admin/bank-statements`); `detail` names the limit of "
        "the endpoint.",
    ),
    "headers-too-large": Kind(
        431,
        "The request's headers are too large",
        "The request line and headers may be at most 16 KiB together. The connection is "
        "closed after this answer.",
    ),
    "rate-limited": Kind(
        429,
        "Too many requests",
        "The key, or the address the request came from (for failed requests), is over its "
        "limit for this minute; retry after `Retry-After` seconds. Limits are configurable "
        "(docs/security.md).",
    ),
    "unavailable": Kind(
        503,
        "The service is unavailable",
        "The database cannot be reached or is overloaded; retry after `Retry-After` seconds.",
    ),
    "internal-error": Kind(
        500,
        "Internal error",
        "An unexpected failure. It is logged with the `error_id` given; quote it when "
        "reporting the problem.",
    ),
}

#: Extra members a domain error may add to its problem document (anything else is dropped,
#: so a future field can never leak by accident).
_EXTRA_MEMBERS = frozenset(
    {
        "errors",
        "reason",
        "component",
        "transaction_id",
        "hold_id",
        "available",
        "requested",
        "max_amount",
        "expected",
        "error_id",
        "remaining_points",
        "retry_after_s",
        "member_id",
        "dispute_id",
    }
)


def request_id(scope: Scope) -> str:
    """This request's id (``req_...``), made on first use; also the ``X-Request-Id`` header."""
    state = scope.setdefault("state", {})
    rid = state.get(_STATE_KEY)
    if rid is None:
        rid = f"req_{secrets.token_hex(12)}"
        state[_STATE_KEY] = rid
    return str(rid)


def adopt_request_id(scope: Scope) -> str:
    """Take the request's ``X-Request-Id`` (8-128 of ``[A-Za-z0-9._:-]``, as proxies make
    them) as its id, or make one: the id its log lines, problem documents and response carry."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _REQUEST_ID_RE.fullmatch(candidate):
                scope.setdefault("state", {})[_STATE_KEY] = candidate
            break
    return request_id(scope)


async def add_request_id(message: Message, scope: Scope) -> None:
    """``before_send`` hook: every response carries ``X-Request-Id``."""
    if message["type"] == "http.response.start":
        headers = list(message.get("headers", []))
        headers.append((b"x-request-id", request_id(scope).encode()))
        message["headers"] = headers


def problem_type(code: str) -> str:
    """The stable relative URI of a problem kind."""
    return f"/problems/{code}"


def problem_body(scope: Scope, code: str, detail: str, **extra: Any) -> tuple[int, bytes]:
    """The status and JSON body of a problem document of kind ``code``."""
    kind = KINDS[code]
    doc: dict[str, Any] = {
        "type": problem_type(code),
        "title": kind.title,
        "status": kind.status,
        "detail": detail,
        "request_id": request_id(scope),
    }
    for name, value in extra.items():
        if name == "status" and code == "hold-not-active":
            doc["hold_status"] = value
        elif name in _EXTRA_MEMBERS and name not in doc:
            doc[name] = value
    return kind.status, msgspec.json.encode(doc)


def problem_response(
    scope: Scope, code: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> Response[bytes]:
    """A problem document as a response."""
    status, body = problem_body(scope, code, detail, **extra)
    all_headers = dict(headers or {})
    if status in (409, 429, 503) and "retry_after_s" in extra:
        all_headers["Retry-After"] = str(extra["retry_after_s"])
    elif status == 503:
        all_headers["Retry-After"] = "5"
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=all_headers)


#: Methods whose requests carry no body: a field a domain error names is a query parameter.
_QUERY_METHODS = frozenset({"GET", "HEAD", "DELETE"})


def location(field: str, *, in_query: bool) -> str:
    """Where the input a domain error names (``amount``, ``transaction_ids[2]``, ``limit``;
    empty: the whole input) is in the request, as a problem document names it: a body's member
    as a JSON path (``$.amount``, ``$``), or ``query.limit`` for a request without a body
    (``in_query``). A location the HTTP edge itself made (``$.x``, ``query.x``, ``path.x``,
    ``header.x``) is kept."""
    if not field:
        return "$"
    if field.startswith(("$", "query.", "path.", "header.")):
        return field
    return f"query.{field}" if in_query else f"$.{field}"


def _at_the_edge(scope: Scope, exc: CoalitionError) -> tuple[str, dict[str, Any]]:
    """The detail and extra members of a domain error, its fields named by where they are in
    the request (:func:`location`)."""
    if not isinstance(exc, ValidationFailed):
        return exc.detail, exc.extra
    in_query = scope.get("method") in _QUERY_METHODS
    errors = [{**e, "path": location(e["path"], in_query=in_query)} for e in exc.errors]
    detail = "; ".join(f"{e['path']}: {e['message']}" for e in errors)
    return detail, {**exc.extra, "errors": errors}


def code_of(exc: CoalitionError) -> str:
    """The problem kind of a domain error (``conflict`` for a code without its own kind)."""
    return exc.code if exc.code in KINDS else "conflict"


def error_body(scope: Scope, exc: CoalitionError) -> tuple[int, bytes]:
    """The problem document of a domain error (what idempotency stores for a 4xx)."""
    code = code_of(exc)
    detail, extra = _at_the_edge(scope, exc)
    return problem_body(scope, code, detail, **extra)


# --- exception handlers ------------------------------------------------------------------


def on_domain_error(request: Request[Any, Any, Any], exc: CoalitionError) -> Response[bytes]:
    """A typed domain error: its problem kind."""
    code = code_of(exc)
    headers = {"WWW-Authenticate": "Signature"} if code == "signature-invalid" else None
    detail, extra = _at_the_edge(request.scope, exc)
    return problem_response(request.scope, code, detail, headers=headers, **extra)


def _litestar_errors(exc: ValidationException) -> list[dict[str, str]]:
    errors = []
    extra = exc.extra if isinstance(exc.extra, list) else []
    for item in extra:
        if not isinstance(item, dict):
            continue
        key = str(item.get("key", ""))
        raw_source = item.get("source", "")
        source = str(getattr(raw_source, "value", raw_source))
        where = f"{source}.{key}" if source and key else key or "$"
        errors.append({"path": where, "message": explain(str(item.get("message", "invalid")))})
    return errors or [{"path": "$", "message": exc.detail}]


def _size_text(limit: int) -> str:
    """A body limit in words: ``64 KiB``, ``16 MiB``."""
    if limit % (1024 * 1024) == 0:
        return f"{limit // (1024 * 1024)} MiB"
    return f"{limit // 1024} KiB" if limit % 1024 == 0 else f"{limit} bytes"


def on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors (routing, body size, parameter validation) as problems."""
    scope = request.scope
    if isinstance(exc, ValidationException):
        errors = _litestar_errors(exc)
        detail = "; ".join(f"{e['path']}: {e['message']}" for e in errors)
        return problem_response(scope, "validation", detail, errors=errors)
    if isinstance(exc, NotFoundException):
        return problem_response(scope, "not-found", f"no resource at {request.url.path}")
    if isinstance(exc, MethodNotAllowedException):
        allow = (exc.headers or {}).get("allow", "")
        return problem_response(
            scope,
            "method-not-allowed",
            f"{request.method} is not allowed on {request.url.path}",
            headers={"Allow": allow} if allow else None,
        )
    if exc.status_code == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        return problem_response(scope, "payload-too-large", _body_limit(request))
    if exc.status_code == 401:
        return problem_response(scope, "signature-invalid", exc.detail)
    if exc.status_code == 403:
        return problem_response(scope, "forbidden", exc.detail)
    if exc.status_code == 409:
        return problem_response(scope, "conflict", exc.detail)
    if exc.status_code == 503:
        return problem_response(scope, "unavailable", exc.detail)
    if 400 <= exc.status_code < 500:
        return problem_response(scope, "validation", exc.detail, errors=[])
    return on_unexpected(request, exc)


def _body_limit(request: Request[Any, Any, Any]) -> str:
    """What a ``413`` says: the limit of the endpoint that refused the body (its own
    ``request_max_body_size``, else the application's), the one limit in force."""
    handler = request.scope.get("route_handler")
    limit = (
        handler.resolve_request_max_body_size() if isinstance(handler, HTTPRouteHandler) else None
    )
    if not limit:
        return "the request body is too large"
    return f"this endpoint's request bodies may be at most {_size_text(limit)}"


def on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Anything else: 503 when the database is out of reach, else a logged 500 (and an info
    line when the client went away before sending its whole request)."""
    scope = request.scope
    if scope.get("state", {}).get(CLIENT_GONE_KEY):
        # Nobody is left to answer: a client going away is routine, not an error.
        log.info("client disconnected before sending the whole request")
        return problem_response(scope, "validation", "the client disconnected", errors=[])
    if database_unreachable(exc):  # a restart, a failover: the client retries, nothing is done
        log.warning("database unavailable (request %s): %s", request_id(scope), type(exc).__name__)
        return problem_response(scope, "unavailable", "the database is unavailable; retry")
    error_id = request_id(scope)
    log.exception(
        "unexpected failure (error id %s) on %s %s", error_id, request.method, request.url.path
    )
    return problem_response(
        scope,
        "internal-error",
        f"an unexpected error occurred; it was logged with error id {error_id}",
        error_id=error_id,
    )


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    CoalitionError: on_domain_error,
    HTTPException: on_http_error,
    Exception: on_unexpected,
}


# --- /problems/<code> --------------------------------------------------------------------


@get(
    "/problems/{code:str}",
    media_type=MediaType.HTML,
    include_in_schema=False,
    sync_to_thread=False,
)
def describe_problem(code: Annotated[str, PathParameter(max_length=64)]) -> Response[str]:
    """A short page describing one problem type."""
    kind = KINDS.get(code)
    if kind is None:
        raise NotFoundException(f"no problem type {code!r}")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{escape(code)}</title></head><body>"
        f"<h1>{escape(kind.title)}</h1>"
        f"<p><code>/problems/{escape(code)}</code> &middot; HTTP {kind.status}</p>"
        f"<p>{escape(kind.meaning)}</p>"
        "<p>Every problem document is <code>application/problem+json</code> (RFC 9457) with "
        "<code>type</code>, <code>title</code>, <code>status</code>, <code>detail</code> and "
        "<code>request_id</code>.</p></body></html>"
    )
    return Response(page, media_type=MediaType.HTML)
