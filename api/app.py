"""The Litestar application: ``create_app()`` is the factory uvicorn runs
(``coalition serve``: ``uvicorn --factory cli.serve:worker_app``, which builds it here).

Layout: :class:`~api.partner.PartnerController` (``/v1``, partner keys),
:class:`~api.admin.AdminController` (``/v1/admin``, operator and finance keys), the unsigned
``GET /v1/health`` and ``GET /v1/signing-keys``, ``GET /problems/<code>``, the OpenAPI document
at ``/schema/openapi.json`` and its interactive page at ``/schema/swagger``, and the web
console at ``/console`` (:mod:`api.console`, not in the OpenAPI document).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, cast

from litestar import Litestar, Request, Response, get
from litestar.datastructures import State
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.spec import Tag
from litestar.types import ASGIApp, Receive, Scope, Send
from sqlalchemy import text

from api.admin import AdminController
from api.audit import AuditController, record_action
from api.bulk import EarnBatchController
from api.console import TEMPLATE_CONFIG, console_router
from api.console.links import AdminMemberLinksController, SignInLinksController
from api.console.web import mark_fresh
from api.docs import COMPONENTS, StrictStructSchemaPlugin, problems
from api.observe import RequestObserver
from api.partner import PartnerController
from api.payments import PaymentsController
from api.problems import EXCEPTION_HANDLERS, add_request_id, describe_problem
from api.runtime import STATE_KEY, Services, services_of
from api.security import add_security_headers
from api.settlement import SettlementAdminController, StatementsController
from api.structs import Health, Liveness, ReplicaHealth, SigningKey
from api.swagger import LocalSwaggerPlugin, assets_router
from api.webhooks import WebhookEndpointController
from coalition import metrics
from coalition.config import Settings, load_settings
from coalition.db import transaction, utcnow
from coalition.errors import Unavailable
from partners.keys import b64url
from settlement.signing import public_keys

log = logging.getLogger("coalition.api")

#: The largest request body accepted (``413 payload-too-large`` beyond).
MAX_BODY_BYTES = 64 * 1024

API_DESCRIPTION = """\
The HTTP API of the coalition settlement service: a shared points ledger for partner brands.

* Partner endpoints live under `/v1`, operator endpoints under `/v1/admin`.
* Every `/v1` request except `GET /v1/health`, `GET /v1/health/live` and
  `GET /v1/signing-keys` is signed (RFC 9421
  HTTP Message Signatures); see the security scheme below and docs/signing.md.
* Every `POST` needs an `Idempotency-Key` header; a repeat returns the first response with
  `Idempotent-Replayed: true`.
* Errors are RFC 9457 problem documents (`application/problem+json`) whose `type` is
  `/problems/<kind>`, served as a short page by this service. Every response carries
  `X-Request-Id`.
* Points are integers; money amounts are decimal strings in major units; times are RFC 3339
  UTC.
"""


@get(
    "/v1/health",
    tags=["service"],
    responses=problems(503),
    sync_to_thread=True,
    security=[],
)
def health(request: Request[Any, Any, Any]) -> Health:
    """The service is up and reaches its database (``503 unavailable`` when it does not)."""
    services = services_of(request.app.state)
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to reach the database is "unavailable"
        log.warning("health: database unreachable: %s", type(exc).__name__)
        raise Unavailable("the database is unreachable") from None
    return Health(status="ok", database="ok", replica=_replica_health(services))


def _replica_health(services: Services) -> ReplicaHealth | None:
    replica = services.reads.replica
    if replica is None:
        return None
    reads: Literal["replica", "primary"] = "replica" if replica.usable else "primary"
    lag = replica.last
    if lag is None:
        return ReplicaHealth(status="unknown", reads=reads)
    if not lag.reachable:
        return ReplicaHealth(status="unreachable", reads=reads)
    status: Literal["ok", "lagging"] = "ok" if lag.within(replica.max_lag_s) else "lagging"
    lag_s = round(lag.lag_s, 3) if math.isfinite(lag.lag_s) else None
    return ReplicaHealth(status=status, reads=reads, lag_s=lag_s, lag_bytes=lag.lag_bytes)


@get("/v1/health/live", tags=["service"], sync_to_thread=False, security=[])
def liveness() -> Liveness:
    """The process answers (no database consulted): restart it when this fails."""
    return Liveness(status="ok")


@get("/metrics", tags=["service"], sync_to_thread=False, security=[], media_type="text/plain")
def prometheus_metrics() -> Response[bytes]:
    """Prometheus text format, every worker process included; restrict it at the network
    edge. No partner or member ids as labels."""
    return Response(metrics.exposition(), media_type=metrics.MEDIA_TYPE)


@get("/v1/signing-keys", tags=["service"], sync_to_thread=True, security=[])
def signing_keys(request: Request[Any, Any, Any]) -> list[SigningKey]:
    """The operator's statement-signing public keys (Ed25519, raw, base64url), the one that
    signs now first; older keys stay so that every statement they signed verifies."""
    services = services_of(request.app.state)
    with transaction(services.sessions) as s:
        return [
            SigningKey(kid=k.kid, alg="ed25519", public_key=b64url(k.public_key))
            for k in public_keys(s)
        ]


#: Unsigned paths that answer ``HEAD`` as ``GET`` without the body (load balancers and uptime
#: checks probe with ``HEAD``).
HEAD_AS_GET = frozenset({"/v1/health", "/v1/health/live"})


class HeadAsGet:
    """Serves ``HEAD`` on :data:`HEAD_AS_GET` as a ``GET``: the application sees a ``GET`` (in
    a copy of the scope), the server sends the status and headers of its answer and no body
    (uvicorn drops a ``HEAD`` response's body by the method it read)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, as a ``GET`` when it is a ``HEAD`` of a health path."""
        if scope.get("method") == "HEAD" and scope["path"] in HEAD_AS_GET:
            await self.app(cast("Scope", {**scope, "method": "GET"}), receive, send)
        else:
            await self.app(scope, receive, send)


def create_app(
    settings: Settings | None = None, clock: Callable[[], datetime] = utcnow
) -> Litestar:
    """The application for ``settings`` (default: the environment), one engine per process."""
    services = Services.build(settings or load_settings(), clock)

    app = Litestar(
        route_handlers=[
            PartnerController,
            EarnBatchController,
            AdminController,
            StatementsController,
            SettlementAdminController,
            PaymentsController,
            WebhookEndpointController,
            AuditController,
            SignInLinksController,
            AdminMemberLinksController,
            console_router(),
            health,
            liveness,
            prometheus_metrics,
            signing_keys,
            describe_problem,
            assets_router(),
        ],
        state=_state(services),
        exception_handlers=EXCEPTION_HANDLERS,
        before_send=[add_request_id, add_security_headers, record_action, mark_fresh],
        request_max_body_size=MAX_BODY_BYTES,
        on_shutdown=[services.close],
        template_config=TEMPLATE_CONFIG,
        plugins=[StrictStructSchemaPlugin()],
        openapi_config=OpenAPIConfig(
            title="Coalition settlement service",
            version="1",
            description=API_DESCRIPTION,
            components=COMPONENTS,
            tags=[
                Tag(name="partner", description="Partner keys, by scope."),
                Tag(name="operator", description="Operator keys (finance: reports)."),
                Tag(name="service", description="Unsigned."),
            ],
            use_handler_docstrings=True,
            render_plugins=[LocalSwaggerPlugin()],
            path="/schema",
        ),
        debug=False,
        # Logging is the process's (coalition.logs: JSON lines), not the framework's.
        logging_config=None,
    )
    app.asgi_handler = RequestObserver(HeadAsGet(app.asgi_handler))
    return app


def _state(services: Services) -> State:
    return State({STATE_KEY: services})
