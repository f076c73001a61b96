"""Idempotent ``POST``: the HTTP side of :mod:`coalition.idempotency`.

Flow of one request (the guard already checked the signature, scope and that the header is
there):

1. **claim** the key for its owner (the partner for partner keys; ``operator`` or ``finance``
   for the others) in a short transaction of its own: a ``running`` row with a lease. An
   existing row means: same request and done -> replay its response with
   ``Idempotent-Replayed: true``; other request -> ``422 idempotency-key-reused``; still
   running -> ``409 idempotency-key-in-use``; lease run out (the first died, nothing
   committed) -> take it over.
2. **run** the operation (decoding the body included) under a savepoint and **store** its
   response, success or problem document, in the same database transaction: a committed
   effect always has its stored response, and a stored response always its effect.
3. an unexpected failure (a 5xx) stores nothing: the claim is released and the key may be
   used again.

The request hash covers the method, the path and the body bytes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

import msgspec
from litestar import Request, Response
from sqlalchemy.orm import Session

from api.auth import idempotency_key
from api.problems import PROBLEM_JSON, error_body
from api.runtime import Services
from coalition import idempotency as store
from coalition.db import transaction
from coalition.errors import CoalitionError, IdempotencyKeyInUse
from partners.signatures import Principal

log = logging.getLogger("coalition.api")

REPLAYED_HEADER = "Idempotent-Replayed"

#: An operation: runs in the given session, returns the status and the response struct.
Operation = Callable[[Session], tuple[int, msgspec.Struct]]


class _ClaimLost(Exception):
    """The lease ran out and another request took the key over: roll back, answer 409."""


def owner_of(principal: Principal) -> str:
    """Whose keys these are: the partner for partner keys, else the role."""
    return principal.partner_id if principal.partner_id is not None else principal.role


def request_hash(method: str, path: str, body: bytes) -> str:
    """SHA-256 over the method, the path and the body bytes."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _response(status: int, body: bytes, *, replayed: bool) -> Response[Any]:
    headers = {REPLAYED_HEADER: "true"} if replayed else {}
    media_type = PROBLEM_JSON if status >= 400 else "application/json"
    return Response(body, status_code=status, media_type=media_type, headers=headers)


def run_idempotent(
    request: Request[Any, Any, Any],
    services: Services,
    principal: Principal,
    body: bytes,
    operation: Operation,
) -> Response[Any]:
    """Run ``operation`` at most once per Idempotency-Key; see the module docstring."""
    key = idempotency_key(request)
    path = request.scope["path"]
    with transaction(services.sessions) as session:
        outcome = store.claim(
            session,
            owner=owner_of(principal),
            key=key,
            request_hash=request_hash(request.method, path, body),
            method=request.method,
            path=path[:2048],
            now=services.clock(),
        )
    if isinstance(outcome, store.StoredResponse):
        return _response(outcome.status, outcome.body, replayed=True)
    try:
        with transaction(services.sessions) as session:
            try:
                with session.begin_nested():
                    status, payload = operation(session)
                content = msgspec.json.encode(payload)
            except CoalitionError as exc:
                status, content = error_body(request.scope, exc)
            if not store.complete(session, outcome, status=status, body=content):
                raise _ClaimLost
    except _ClaimLost:
        raise IdempotencyKeyInUse(
            f"the request with Idempotency-Key {key!r} outlived its lease and was taken over "
            "by a retry; nothing was changed by this one"
        ) from None
    except BaseException:
        _release(services, outcome)
        raise
    return _response(status, content, replayed=False)


def _release(services: Services, held: store.Claim) -> None:
    try:
        with transaction(services.sessions) as session:
            store.release(session, held)
    except Exception:
        # The lease runs out on its own; a retry after it takes the key over.
        log.warning("could not release Idempotency-Key claim of %s", held.owner, exc_info=True)
