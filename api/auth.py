"""Authentication and authorization at the edge: every signed ``/v1`` route has this guard.

The guard verifies the request's RFC 9421 signature (:func:`partners.signatures.verify_request`,
against the URLs :func:`api.security.signed_urls` says are the service's own), then checks the
key's role and scope against what the route declares in its ``opt`` (see :func:`partner`,
:func:`admin`), then, for a ``POST``, that an ``Idempotency-Key`` header is present. Order of
answers: ``401 signature-invalid``, ``403 forbidden``, ``400 idempotency-key-missing``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import anyio.to_thread
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from api.runtime import Services, services_of
from api.security import client_address, count_failure, signed_urls
from coalition.db import transaction
from coalition.errors import Forbidden, IdempotencyKeyMissing, SignatureInvalid
from partners.replay import claim_post_signature
from partners.signatures import Principal, verify_request

_PRINCIPAL_KEY = "coalition_principal"
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")


@dataclass(frozen=True, slots=True)
class Access:
    """Who may call a route: key roles, and for partner keys the scopes (any one of them)."""

    roles: frozenset[str]
    scopes: frozenset[str] = frozenset()


def partner(*scopes: str) -> dict[str, Any]:
    """Route ``opt`` for partner keys holding one of ``scopes`` (none: any partner key)."""
    return {"access": Access(frozenset({"partner"}), frozenset(scopes))}


def any_key() -> dict[str, Any]:
    """Route ``opt`` for every valid key (``GET /v1/me``)."""
    return {"access": Access(frozenset({"partner", "operator", "finance"}))}


def admin(*roles: str) -> dict[str, Any]:
    """Route ``opt`` for operator (and, when named, finance) keys."""
    return {"access": Access(frozenset(roles or ("operator",)))}


def principal_in(scope: Any) -> Principal | None:
    """The principal the guard verified for the request of this ASGI scope, if any."""
    principal = scope.get("state", {}).get(_PRINCIPAL_KEY)
    return principal if isinstance(principal, Principal) else None


def principal_of(request: Request[Any, Any, Any]) -> Principal:
    """The principal the guard verified for this request."""
    principal = request.scope.get("state", {}).get(_PRINCIPAL_KEY)
    assert isinstance(principal, Principal), "route without the signature guard"
    return principal


def _verify(  # noqa: PLR0917 (called through functools.partial)
    services: Services,
    method: str,
    url: str,
    alternates: tuple[str, ...],
    headers: Any,
    body: bytes,
) -> Principal:
    with transaction(services.sessions) as session:
        principal = verify_request(
            session,
            method=method,
            url=url,
            headers=headers,
            body=body,
            secret_key=services.settings.secret_key,
            now=services.clock(),
            alternate_urls=alternates,
        )
        if method == "POST":
            claim_post_signature(
                session, key_id=principal.key_id, headers=headers, now=services.clock()
            )
        services.limiter.count_request(session, principal.key_id, services.clock())
        return principal


def _authorize(principal: Principal, access: Access) -> None:
    if principal.role not in access.roles:
        wanted = " or ".join(sorted(access.roles))
        raise Forbidden(
            f"this endpoint needs a {wanted} key; key {principal.key_id} is a {principal.role} key"
        )
    if principal.role == "partner" and access.scopes and not access.scopes & principal.scopes:
        wanted = " or ".join(sorted(access.scopes))
        raise Forbidden(
            f"this endpoint needs the scope {wanted}; key {principal.key_id} has "
            f"{', '.join(sorted(principal.scopes)) or 'none'}"
        )


def require_scope(principal: Principal, scope: str) -> None:
    """A partner key must hold ``scope`` (for rules that depend on the object, e.g. reversals)."""
    if scope not in principal.scopes:
        raise Forbidden(f"this needs the scope {scope}; key {principal.key_id} does not have it")


def idempotency_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The request's ``Idempotency-Key`` (1-255 visible ASCII), or 400."""
    key = connection.headers.get("idempotency-key")
    if key is None:
        raise IdempotencyKeyMissing("this POST needs an Idempotency-Key header")
    if not IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise IdempotencyKeyMissing(
            "the Idempotency-Key header must be 1 to 255 visible ASCII characters"
        )
    return key


async def signed(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The guard of every signed route: signature, then role and scope, then Idempotency-Key."""
    request = cast("Request[Any, Any, Any]", connection)
    services = services_of(connection.app.state)
    body = await request.body()
    address = client_address(connection)
    services.limiter.before_verification(address, services.clock())
    try:
        url, alternates = signed_urls(connection, services.settings)
        principal = await anyio.to_thread.run_sync(
            partial(
                _verify,
                services,
                request.method,
                url,
                alternates,
                connection.headers,
                body,
            )
        )
    except SignatureInvalid:
        await anyio.to_thread.run_sync(partial(count_failure, services, address))
        raise
    connection.scope.setdefault("state", {})[_PRINCIPAL_KEY] = principal
    access = handler.opt.get("access")
    assert isinstance(access, Access), f"{handler} declares no access"
    _authorize(principal, access)
    if request.method == "POST":
        idempotency_key(connection)
