"""Authentication and authorization at the edge: every signed ``/v1`` route has this guard.

The guard (:func:`signed`) is its controller's ``before_request`` hook rather than a Litestar
guard: Litestar copies the route handler for every guard it calls, 3% of a signed earn's
Python (docs/benchmarks.md). Either way it runs before the request's parameters and body are
read, and what it raises is answered as any error is.

The guard verifies the request's RFC 9421 signature (:func:`partners.signatures
.verify_signature`, against the URLs :func:`api.security.signed_urls` says are the service's
own)
with the keys of the process's :class:`~partners.signatures.KeyCache`, so a known key costs no
database round trip; then checks the key's role and scope against what the route declares in
its ``opt`` (see :func:`partner`, :func:`admin`), then, for a ``POST``, that an
``Idempotency-Key`` header is present. Order of answers: ``401 signature-invalid``,
``403 forbidden``, ``400 idempotency-key-missing``.

What the signature writes (the nonce, the key's revalidation, ``last_used_at``:
:func:`~partners.signatures.record_use`) goes into the request's own database transaction,
opened by :func:`request_unit`: every ``POST`` (through :func:`api.idempotency.run_idempotent`,
which writes the nonce, or the signature's first use, in the round trip of its Idempotency-Key
claim) and every route declared ``one_transaction`` (the balance read writes its nonce in the
statement that reads the balance). For the other routes the guard writes it in
a short transaction of its own. Either way a ``401`` from it (a replayed nonce, a key revoked
meanwhile) changes nothing.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Set
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio.to_thread
from litestar import Request
from litestar.connection import ASGIConnection
from sqlalchemy.orm import Session

from api.runtime import Services, services_of
from api.security import client_address, count_failure, signed_urls
from coalition import logs
from coalition.db import WHOLE, transaction
from coalition.errors import (
    Forbidden,
    IdempotencyKeyMissing,
    InvariantViolated,
    SignatureInvalid,
    required,
)
from coalition.hot import Prelude
from partners.replay import claim_post_signature, post_signature_prelude
from partners.signatures import (
    CachedKey,
    Principal,
    Verified,
    nonce_prelude,
    parse_signed,
    record_use,
    verify_signature,
)

_PRINCIPAL_KEY = "coalition_principal"
_VERIFIED_KEY = "coalition_verified"
#: Route ``opt`` key: the handler opens :func:`request_unit`, which records the signature's use.
ONE_TRANSACTION = "one_transaction"
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")


@dataclass(frozen=True, slots=True)
class Access:
    """Who may call a route: key roles, and for partner keys the scopes (any one of them)."""

    roles: frozenset[str]
    scopes: frozenset[str] = frozenset()


def partner(*scopes: str, one_transaction: bool = False) -> dict[str, Any]:
    """Route ``opt`` for partner keys holding one of ``scopes`` (none: any partner key);
    ``one_transaction``: the handler runs in :func:`request_unit`."""
    return {
        "access": Access(frozenset({"partner"}), frozenset(scopes)),
        ONE_TRANSACTION: one_transaction,
    }


def any_key(*, one_transaction: bool = False) -> dict[str, Any]:
    """Route ``opt`` for every valid key (``GET /v1/me``)."""
    return {
        "access": Access(frozenset({"partner", "operator", "finance"})),
        ONE_TRANSACTION: one_transaction,
    }


def admin(*roles: str) -> dict[str, Any]:
    """Route ``opt`` for operator (and, when named, finance) keys."""
    return {"access": Access(frozenset(roles or ("operator",)))}


def principal_in(scope: Any) -> Principal | None:
    """The principal the guard verified for the request of this ASGI scope, if any."""
    principal = scope.get("state", {}).get(_PRINCIPAL_KEY)
    return principal if isinstance(principal, Principal) else None


def bind_principal(scope: Any, principal: Principal) -> None:
    """Make ``principal`` the one who acts in this request (what :func:`principal_in` reads,
    and the audit log records)."""
    scope.setdefault("state", {})[_PRINCIPAL_KEY] = principal


def partner_id_of(principal: Principal) -> str:
    """The partner of a principal on a partner route (the guard admits partner keys only)."""
    return required(principal.partner_id, "partner routes admit partner keys only")


def principal_of(request: Request[Any, Any, Any]) -> Principal:
    """The principal the guard verified for this request."""
    principal = request.scope.get("state", {}).get(_PRINCIPAL_KEY)
    if not isinstance(principal, Principal):
        raise InvariantViolated("route without the signature guard")
    return principal


def _load_keys(services: Services, key_ids: Set[str]) -> dict[str, CachedKey]:
    with transaction(services.sessions) as session:
        return services.keys.load(session, key_ids)


def _record_use_alone(services: Services, verified: Verified) -> None:
    with transaction(services.sessions) as session:
        record_use(session, verified, services.keys)


def _verified(request: Request[Any, Any, Any]) -> Verified:
    verified = request.scope["state"].get(_VERIFIED_KEY)
    if not isinstance(verified, Verified):
        raise InvariantViolated("route without the signature guard")
    return verified


@contextlib.contextmanager
def request_unit(
    request: Request[Any, Any, Any], *, single_use_later: bool = False
) -> Iterator[Session]:
    """A database transaction of the request, starting with what its signature writes
    (:func:`~partners.signatures.record_use`); commits when the block ends, rolls back whole on
    any exception (so operations in it take no savepoints: :data:`coalition.db.WHOLE`).

    ``single_use_later``: what makes the request single-use (its nonce, or the first use of its
    signature) is left to the caller, who writes it in the round trip of the request's first
    statement (:func:`single_use`): the Idempotency-Key claim's, or a balance read's."""
    services = services_of(request.app.state)
    verified = _verified(request)
    with transaction(services.sessions) as session:
        session.info[WHOLE] = True
        record_use(session, verified, services.keys, nonce=not single_use_later)
        # With a nonce, the claim writes the nonce; the signature's use is still checked here
        # (it writes nothing unless another signature of the key lacks a nonce).
        if request.method == "POST" and (not single_use_later or verified.nonce is not None):
            claim_post_signature(
                session,
                key_id=verified.principal.key_id,
                signed=verified.signed,
                idempotency_key=request.headers.get("idempotency-key"),
                now=verified.now,
            )
        yield session


def alone(request: Request[Any, Any, Any]) -> bool:
    """True when this ``GET``'s one statement may be its transaction, without
    :func:`request_unit` (:meth:`coalition.hot.HotStatement.alone`): on PostgreSQL, while what
    its signature writes is only its nonce, which that statement writes (:func:`single_use`),
    its key's revalidation and ``last_used_at`` not due (:meth:`~partners.signatures.KeyCache
    .quiet`). Otherwise the request opens :func:`request_unit`, which does them."""
    services = services_of(request.app.state)
    if request.method != "GET" or services.engine.dialect.name != "postgresql":
        return False
    return services.keys.quiet(_verified(request).principal.key_id)


def single_use(request: Request[Any, Any, Any]) -> Prelude | None:
    """What makes this signed request single-use, as its first statement writes it
    (:func:`request_unit` with ``single_use_later``): its nonce, or else, for a ``POST`` whose
    signature has none, the first use of its signature (:mod:`partners.replay`)."""
    verified = _verified(request)
    prelude = nonce_prelude(verified)
    if prelude is not None or request.method != "POST":
        return prelude
    return post_signature_prelude(
        key_id=verified.principal.key_id,
        signed=verified.signed,
        idempotency_key=request.headers.get("idempotency-key"),
        now=verified.now,
    )


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


async def signed(request: Request[Any, Any, Any]) -> None:
    """The guard of every signed route (its controller's ``before_request``): signature, then
    role and scope, then Idempotency-Key."""
    services = services_of(request.app.state)
    body = await request.body()
    address = client_address(request)
    now = services.clock()
    services.limiter.before_verification(address, now)
    try:
        url, alternates = signed_urls(request, services.settings)
        signed = parse_signed(request.headers)
        wanted = signed.key_ids
        keys = services.keys.cached(wanted)
        if len(keys) < len(wanted):  # a key this process has not seen: read it once
            keys.update(
                await anyio.to_thread.run_sync(partial(_load_keys, services, wanted - keys.keys()))
            )
        verified = verify_signature(
            keys,
            signed,
            method=request.method,
            url=url,
            body=body,
            now=now,
            alternate_urls=alternates,
        )
    except SignatureInvalid:
        await anyio.to_thread.run_sync(partial(count_failure, services, address))
        raise
    bind_principal(request.scope, verified.principal)
    request.scope["state"][_VERIFIED_KEY] = verified
    logs.bind(key_id=verified.principal.key_id, partner_id=verified.principal.partner_id)
    limiter, key_id = services.limiter, verified.principal.key_id
    limiter.count(key_id, now)
    if limiter.flush_due():  # a few times a second: merge this process's counts, learn the rest
        await anyio.to_thread.run_sync(partial(limiter.flush, services.sessions, now))
    limiter.check(key_id, now)
    handler = request.route_handler
    access = handler.opt.get("access")
    if not isinstance(access, Access):
        raise InvariantViolated(f"{handler} declares no access")
    _authorize(verified.principal, access)
    if request.method == "POST":
        idempotency_key(request)
    elif not handler.opt.get(ONE_TRANSACTION):
        await anyio.to_thread.run_sync(partial(_record_use_alone, services, verified))
