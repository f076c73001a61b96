"""Webhook endpoint management (``/v1/webhook-endpoints``, partner keys with scope
``webhooks``): each handler maps HTTP to one call of
:class:`partners.webhooks.endpoints.Webhooks`.
Another partner's endpoint is ``404``, like an endpoint that does not exist.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, delete, patch
from litestar.params import QueryParameter, RawBody
from msgspec import Meta, Struct

from api.auth import partner, partner_id_of, principal_of, signed
from api.decoding import decode
from api.docs import SIGNED, body, problems
from api.handlers import Call, Caller, operation, reader
from api.runtime import Services, services_of
from api.structs import LINE, AwareTime, EmptyBody, IdPath, full_match
from api.structs import Request as RequestBody
from coalition.db import transaction
from coalition.errors import ValidationFailed
from partners.webhooks.endpoints import DESCRIPTION_MAX, NewEndpoint, Webhooks
from partners.webhooks.events import SUBSCRIBABLE
from partners.webhooks.tables import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from partners.webhooks.urls import MAX_URL_LENGTH

if TYPE_CHECKING:
    EventName = str
else:
    #: The subscribable event types, as the domain declares them (one ``Literal`` of
    #: :data:`partners.webhooks.events.SUBSCRIBABLE`): the request structs refuse any other
    #: name and the OpenAPI document lists them.
    EventName = Literal[SUBSCRIBABLE]
Url = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        pattern=full_match(r"[\x21-\x7e]+", "a URL: visible ASCII, no white space"),
        description="An http or https URL on a public address.",
        examples=["https://example.com/coalition/webhooks"],
    ),
]
Description = Annotated[
    str, Meta(max_length=DESCRIPTION_MAX, pattern=LINE, description="One line.")
]
Events = Annotated[list[EventName], Meta(min_length=1, max_length=len(SUBSCRIBABLE))]
Limit = Annotated[int, QueryParameter(ge=1, le=500)]
Cursor = Annotated[
    str | None,
    QueryParameter(
        max_length=20,
        pattern=full_match("[0-9]{1,19}", "a cursor"),
        description="`next_cursor` of the previous page.",
    ),
]


class EndpointCreate(RequestBody):
    """``POST /v1/webhook-endpoints``; ``events`` omitted: every event."""

    url: Url
    events: Events | None = None
    description: Description | None = None


class EndpointUpdate(RequestBody):
    """``PATCH /v1/webhook-endpoints/{id}``: any of the fields (``events: null``: every event)."""

    url: Url | msgspec.UnsetType = msgspec.UNSET
    events: Events | msgspec.UnsetType | None = msgspec.UNSET
    disabled: bool | msgspec.UnsetType = msgspec.UNSET


class RecoverRequest(RequestBody):
    """``POST /v1/webhook-endpoints/{id}/recover``: failed deliveries since then, again."""

    since: AwareTime


class EndpointOut(Struct, omit_defaults=True):
    """An endpoint; ``secret`` only when created or rotated, never again."""

    id: str
    url: str
    events: list[str] | None
    description: str | None
    disabled: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime
    previous_secret_expires_at: datetime | None = None
    #: Since when every attempt has failed (absent when the last one succeeded); after 5 days
    #: of that the endpoint is disabled, with the reason in ``disabled_reason``.
    failing_since: datetime | None = None
    secret: str | None = None


class EndpointList(Struct):
    """The partner's endpoints (at most 10)."""

    data: list[EndpointOut]


class Accepted(Struct, omit_defaults=True):
    """A ``202``: what was queued."""

    status: Literal["accepted"]
    event_id: str | None = None
    deliveries: int | None = None


class AttemptOut(Struct):
    """One attempt: the HTTP status (null when no answer came), the latency, the error, the
    first 1,024 bytes of the response body."""

    attempt: int
    at: datetime
    status_code: int | None
    latency_ms: int
    error: str | None
    response: str | None


class DeliveryOut(Struct):
    """A delivery of one event to the endpoint, with its last attempt and every attempt,
    oldest first (``history``)."""

    id: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_latency_ms: int | None
    last_error: str | None
    history: list[AttemptOut]


class DeliveryPage(Struct):
    """A page of deliveries, newest first."""

    data: list[DeliveryOut]
    has_more: bool
    next_cursor: str | None


def endpoint_out(endpoint: WebhookEndpoint, secret: str | None = None) -> EndpointOut:
    """An endpoint in the API's shape."""
    return EndpointOut(
        id=endpoint.id,
        url=endpoint.url,
        events=endpoint.subscribed(),
        description=endpoint.description,
        disabled=endpoint.disabled,
        disabled_reason=endpoint.disabled_reason,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
        previous_secret_expires_at=endpoint.previous_expires_at,
        failing_since=endpoint.failing_since,
        secret=secret,
    )


def _created(new: NewEndpoint) -> EndpointOut:
    return endpoint_out(new.endpoint, new.secret)


def delivery_out(
    delivery: WebhookDelivery, event_type: str, attempts: list[WebhookAttempt]
) -> DeliveryOut:
    """A delivery in the API's shape."""
    return DeliveryOut(
        id=str(delivery.id),
        event_id=delivery.event_id,
        event_type=event_type,
        status=delivery.status,
        attempts=delivery.attempts,
        created_at=delivery.created_at,
        next_attempt_at=delivery.next_attempt_at,
        last_attempt_at=delivery.last_attempt_at,
        last_status_code=delivery.last_status_code,
        last_latency_ms=delivery.last_latency_ms,
        last_error=delivery.last_error,
        history=[
            AttemptOut(
                attempt=a.attempt,
                at=a.attempted_at,
                status_code=a.status_code,
                latency_ms=a.latency_ms,
                error=a.error,
                response=a.response_excerpt,
            )
            for a in attempts
        ],
    )


def webhooks_of(services: Services) -> Webhooks:
    """The endpoint management with the service's settings."""
    return Webhooks(services.settings.secret_key, services.settings.webhook_allow_private)


class WebhookEndpointController(Controller):
    """A partner's webhook endpoints (scope ``webhooks``)."""

    path = "/v1/webhook-endpoints"
    before_request = staticmethod(signed)
    security = SIGNED
    tags = ["webhooks"]  # noqa: RUF012

    @operation(
        "/",
        opt=partner("webhooks"),
        body=EndpointCreate,
        problems=(400, 403, 409, 413, 422),
    )
    def create_endpoint(self, call: Call[EndpointCreate]) -> EndpointOut:
        """Register an endpoint; its ``secret`` (``whsec_...``) is shown here only."""
        data = call.data
        new = webhooks_of(call.services).create(
            call.session,
            call.partner_id,
            url=data.url,
            events=list(data.events) if data.events is not None else None,
            description=data.description,
            now=call.services.clock(),
        )
        return _created(new)

    @reader("/", opt=partner("webhooks"), problems=(403,))
    def list_endpoints(self, caller: Caller) -> EndpointList:
        """The partner's endpoints, oldest first."""
        with transaction(caller.services.sessions) as s:
            found = webhooks_of(caller.services).all(s, caller.partner_id)
            return EndpointList([endpoint_out(e) for e in found])

    @reader("/{endpoint_id:str}", opt=partner("webhooks"), problems=(403, 404, 422))
    def get_endpoint(self, caller: Caller, endpoint_id: IdPath) -> EndpointOut:
        """One of the partner's endpoints."""
        with transaction(caller.services.sessions) as s:
            found = webhooks_of(caller.services).get(s, caller.partner_id, endpoint_id)
            return endpoint_out(found)

    @patch(
        "/{endpoint_id:str}",
        opt=partner("webhooks"),
        dependencies=body(EndpointUpdate),
        responses=problems(403, 404, 413, 422),
        sync_to_thread=True,
    )
    def update_endpoint(
        self, request: Request[Any, Any, Any], endpoint_id: IdPath, body: RawBody
    ) -> EndpointOut:
        """Change the URL, the events (``null``: every event) or ``disabled``."""
        services = services_of(request.app.state)
        data = decode(body, EndpointUpdate)
        changes = {
            name: getattr(data, name)
            for name in ("url", "events", "disabled")
            if getattr(data, name) is not msgspec.UNSET
        }
        if "disabled" in changes and changes["disabled"] is None:
            raise ValidationFailed.at("$.disabled", "true or false")
        with transaction(services.sessions) as s:
            updated = webhooks_of(services).update(
                s,
                partner_id_of(principal_of(request)),
                endpoint_id,
                changes=changes,
                now=services.clock(),
            )
            return endpoint_out(updated)

    @delete(
        "/{endpoint_id:str}",
        opt=partner("webhooks"),
        responses=problems(403, 404, 422),
        status_code=200,
        sync_to_thread=True,
    )
    def delete_endpoint(self, request: Request[Any, Any, Any], endpoint_id: IdPath) -> EndpointOut:
        """Remove the endpoint and its pending deliveries; the removed endpoint."""
        services = services_of(request.app.state)
        with transaction(services.sessions) as s:
            gone = webhooks_of(services).delete(
                s, partner_id_of(principal_of(request)), endpoint_id
            )
            return endpoint_out(gone)

    @operation(
        "/{endpoint_id:str}/rotate-secret",
        opt=partner("webhooks"),
        body=EmptyBody,
        empty_as_object=True,
        problems=(400, 403, 404, 413, 422),
        status_code=200,
    )
    def rotate_secret(self, call: Call[EmptyBody], endpoint_id: IdPath) -> EndpointOut:
        """A new secret (shown here only); the old one keeps signing alongside for 24 h."""
        new = webhooks_of(call.services).rotate(
            call.session, call.partner_id, endpoint_id, now=call.services.clock()
        )
        return _created(new)

    @operation(
        "/{endpoint_id:str}/test",
        opt=partner("webhooks"),
        body=EmptyBody,
        empty_as_object=True,
        problems=(400, 403, 404, 413, 422),
        status_code=202,
    )
    def test_endpoint(self, call: Call[EmptyBody], endpoint_id: IdPath) -> Accepted:
        """Queue a ``ping`` event to this endpoint."""
        event_id = webhooks_of(call.services).ping(
            call.session, call.partner_id, endpoint_id, now=call.services.clock()
        )
        return Accepted("accepted", event_id=event_id)

    @reader("/{endpoint_id:str}/deliveries", opt=partner("webhooks"), problems=(403, 404, 422))
    def list_deliveries(
        self,
        caller: Caller,
        endpoint_id: IdPath,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> DeliveryPage:
        """The endpoint's deliveries, newest first, with their last attempt."""
        with transaction(caller.services.sessions) as s:
            rows = webhooks_of(caller.services).deliveries(
                s,
                caller.partner_id,
                endpoint_id,
                after=int(cursor) if cursor is not None else None,
                limit=limit + 1,
            )
            page = [delivery_out(d, t, a) for d, t, a in rows[:limit]]
        has_more = len(rows) > limit
        return DeliveryPage(page, has_more, page[-1].id if has_more else None)

    @operation(
        "/{endpoint_id:str}/recover",
        opt=partner("webhooks"),
        body=RecoverRequest,
        problems=(400, 403, 404, 413, 422),
        status_code=202,
    )
    def recover(self, call: Call[RecoverRequest], endpoint_id: IdPath) -> Accepted:
        """Send the endpoint's failed deliveries since ``since`` again (same ``webhook-id``)."""
        count = webhooks_of(call.services).recover(
            call.session,
            call.partner_id,
            endpoint_id,
            since=call.data.since,
            now=call.services.clock(),
        )
        return Accepted("accepted", deliveries=count)
