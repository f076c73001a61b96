"""A partner's webhook endpoints: registration (with the outbound-safety check of the URL,
:mod:`partners.webhooks.urls`), listing, update, deletion, secret rotation
(:mod:`partners.webhooks.signing`), test pings, the deliveries and their attempts, recovery;
and the operator's health view of every endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.orm import Session

from coalition import text
from coalition.errors import Conflict, NotFound, ValidationFailed
from coalition.ids import new_id
from partners.keys import seal
from partners.models import Partner
from partners.webhooks.events import SUBSCRIBABLE, EventType, body_of
from partners.webhooks.signing import ROTATION_OVERLAP, new_secret
from partners.webhooks.tables import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from partners.webhooks.urls import Resolver, check_url, resolve

MAX_ENDPOINTS_PER_PARTNER = 10
#: The longest endpoint description.
DESCRIPTION_MAX = 500
#: Deliveries one recovery may send again (the oldest first; call again for the rest).
RECOVER_BATCH = 10_000


def _events(events: list[str] | None) -> str | None:
    if events is None:
        return None
    if not events:
        raise ValidationFailed.at("events", "omit events to subscribe to all; [] is none")
    for i, name in enumerate(events):
        if name not in SUBSCRIBABLE:
            raise ValidationFailed.at(f"events[{i}]", f"one of {', '.join(SUBSCRIBABLE)}")
    return " ".join(sorted(set(events)))


@dataclass(frozen=True, slots=True)
class NewEndpoint:
    """An endpoint as created or rotated: the secret appears here and nowhere else, ever."""

    endpoint: WebhookEndpoint
    secret: str


@dataclass(frozen=True, slots=True)
class Webhooks:
    """A partner's endpoint management, in the caller's session."""

    secret_key: bytes
    allow_private: bool
    resolver: Resolver = resolve

    def create(
        self,
        session: Session,
        partner_id: str,
        *,
        url: str,
        events: list[str] | None,
        description: str | None,
        now: datetime,
    ) -> NewEndpoint:
        """Register an endpoint (at most :data:`MAX_ENDPOINTS_PER_PARTNER` per partner)."""
        check_url(url, allow_private=self.allow_private, resolver=self.resolver)
        if description is not None:
            description = text.clean(
                description, "description", max_length=DESCRIPTION_MAX, required=False
            )
        subscribed = _events(events)
        # The partner's row lock serialises registrations, so the limit holds under races.
        session.execute(select(Partner.id).where(Partner.id == partner_id).with_for_update())
        count = session.scalar(
            select(func.count())
            .select_from(WebhookEndpoint)
            .where(WebhookEndpoint.partner_id == partner_id)
        )
        if (count or 0) >= MAX_ENDPOINTS_PER_PARTNER:
            raise Conflict(f"a partner has at most {MAX_ENDPOINTS_PER_PARTNER} webhook endpoints")
        endpoint_id = new_id("we")
        shown, raw = new_secret()
        endpoint = WebhookEndpoint(
            id=endpoint_id,
            partner_id=partner_id,
            url=url,
            events=subscribed,
            description=description,
            disabled=False,
            disabled_reason=None,
            secret_sealed=seal(self.secret_key, endpoint_id, raw),
            previous_secret_sealed=None,
            previous_expires_at=None,
            created_at=now,
            updated_at=now,
        )
        session.add(endpoint)
        session.flush()
        return NewEndpoint(endpoint, shown)

    def get(self, session: Session, partner_id: str, endpoint_id: str) -> WebhookEndpoint:
        """The partner's endpoint; another partner's is not found."""
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        if endpoint is None or endpoint.partner_id != partner_id:
            raise NotFound(f"no webhook endpoint {endpoint_id}")
        return endpoint

    def all(self, session: Session, partner_id: str) -> list[WebhookEndpoint]:
        """The partner's endpoints, oldest first (at most :data:`MAX_ENDPOINTS_PER_PARTNER`)."""
        return list(
            session.scalars(
                select(WebhookEndpoint)
                .where(WebhookEndpoint.partner_id == partner_id)
                .order_by(WebhookEndpoint.id)
                .limit(MAX_ENDPOINTS_PER_PARTNER)
            )
        )

    def update(
        self,
        session: Session,
        partner_id: str,
        endpoint_id: str,
        *,
        changes: dict[str, Any],
        now: datetime,
    ) -> WebhookEndpoint:
        """Change ``url``, ``events`` (None: all) or ``disabled`` (enabling clears the reason and
        the failing streak: the 5 days start again)."""
        endpoint = self.get(session, partner_id, endpoint_id)
        if "url" in changes:
            check_url(changes["url"], allow_private=self.allow_private, resolver=self.resolver)
            endpoint.url = changes["url"]
        if "events" in changes:
            endpoint.events = _events(changes["events"])
        if "disabled" in changes:
            endpoint.disabled = bool(changes["disabled"])
            endpoint.disabled_reason = "disabled by the partner" if endpoint.disabled else None
            if not endpoint.disabled:
                endpoint.failing_since = None
        endpoint.updated_at = now
        session.flush()
        return endpoint

    def delete(self, session: Session, partner_id: str, endpoint_id: str) -> WebhookEndpoint:
        """Remove an endpoint and its deliveries (their attempts go with them)."""
        endpoint = self.get(session, partner_id, endpoint_id)
        session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id))
        session.delete(endpoint)
        session.flush()
        return endpoint

    def rotate(
        self, session: Session, partner_id: str, endpoint_id: str, *, now: datetime
    ) -> NewEndpoint:
        """A new secret; the current one keeps signing alongside for :data:`ROTATION_OVERLAP`
        (a rotation during an overlap ends the older one's)."""
        endpoint = self.get(session, partner_id, endpoint_id)
        shown, raw = new_secret()
        endpoint.previous_secret_sealed = endpoint.secret_sealed
        endpoint.previous_expires_at = now + ROTATION_OVERLAP
        endpoint.secret_sealed = seal(self.secret_key, endpoint.id, raw)
        endpoint.updated_at = now
        session.flush()
        return NewEndpoint(endpoint, shown)

    def ping(self, session: Session, partner_id: str, endpoint_id: str, *, now: datetime) -> str:
        """A ``ping`` event to this one endpoint (even when disabled: it tests the URL); the
        event id."""
        endpoint = self.get(session, partner_id, endpoint_id)
        event_id = new_id("evt")
        data = {"endpoint_id": endpoint.id}
        session.add(
            WebhookEvent(
                id=event_id,
                type=EventType.PING,
                partner_id=partner_id,
                payload=body_of(event_id, EventType.PING, now, data),
                created_at=now,
            )
        )
        session.flush()
        session.add(
            WebhookDelivery(
                event_id=event_id,
                endpoint_id=endpoint.id,
                status=DeliveryStatus.PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
        session.flush()
        return event_id

    def deliveries(
        self,
        session: Session,
        partner_id: str,
        endpoint_id: str,
        *,
        after: int | None,
        limit: int,
    ) -> list[tuple[WebhookDelivery, str, list[WebhookAttempt]]]:
        """The endpoint's deliveries, newest first, after the ``after`` cursor; with the event
        type of each and its attempts, oldest first (one more query for the page)."""
        self.get(session, partner_id, endpoint_id)
        stmt = (
            select(WebhookDelivery, WebhookEvent.type)
            .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .order_by(WebhookDelivery.id.desc())
            .limit(limit)
        )
        if after is not None:
            stmt = stmt.where(WebhookDelivery.id < after)
        page = [(d, t) for d, t in session.execute(stmt)]
        attempts: dict[int, list[WebhookAttempt]] = {d.id: [] for d, _ in page}
        if page:
            for attempt in session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id.in_(list(attempts)))
                .order_by(WebhookAttempt.id)
            ):
                attempts[attempt.delivery_id].append(attempt)
        return [(d, t, attempts[d.id]) for d, t in page]

    def recover(
        self, session: Session, partner_id: str, endpoint_id: str, *, since: datetime, now: datetime
    ) -> int:
        """Send the endpoint's failed deliveries of events since ``since`` again (a new retry
        schedule, the same ``webhook-id``); how many, at most :data:`RECOVER_BATCH`."""
        self.get(session, partner_id, endpoint_id)
        if since > now:
            raise ValidationFailed.at("since", "a time in the past")
        ids = (
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.endpoint_id == endpoint_id,
                WebhookDelivery.status == DeliveryStatus.FAILED,
                WebhookDelivery.created_at >= since,
            )
            .order_by(WebhookDelivery.id)
            .limit(RECOVER_BATCH)
        )
        result = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(ids.scalar_subquery()))
            .values(status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    """An endpoint across partners, with its deliveries that failed and that wait."""

    endpoint: WebhookEndpoint
    failed: int
    pending: int


#: The most endpoints and recent attempts the health view lists.
HEALTH_LIMIT = 100


def health(
    session: Session,
) -> tuple[list[EndpointHealth], list[tuple[WebhookAttempt, WebhookDelivery, str]]]:
    """Every partner's endpoints, failing ones first (longest first), then disabled ones, with
    their failed and waiting deliveries counted (through the partial index of deliveries not
    delivered: delivered ones, nearly all of them, are not read), and the latest attempts
    anywhere (newest first, by the attempts' primary key) with their delivery and endpoint's
    partner id; each at most :data:`HEALTH_LIMIT`. For the operator's view: a partner reads
    only its own endpoints."""
    endpoints = list(
        session.scalars(
            select(WebhookEndpoint)
            .order_by(
                WebhookEndpoint.failing_since.is_(None),
                WebhookEndpoint.failing_since,
                WebhookEndpoint.disabled.desc(),
                WebhookEndpoint.id,
            )
            .limit(HEALTH_LIMIT)
        )
    )
    counts: dict[str, tuple[int, int]] = {}
    if endpoints:
        for endpoint_id, failed, pending in session.execute(
            select(
                WebhookDelivery.endpoint_id,
                func.sum(case((WebhookDelivery.status == DeliveryStatus.FAILED, 1), else_=0)),
                func.sum(case((WebhookDelivery.status == DeliveryStatus.PENDING, 1), else_=0)),
            )
            .where(
                WebhookDelivery.endpoint_id.in_([e.id for e in endpoints]),
                WebhookDelivery.status != DeliveryStatus.DELIVERED,
            )
            .group_by(WebhookDelivery.endpoint_id)
        ):
            counts[endpoint_id] = (int(failed or 0), int(pending or 0))
    listed = [EndpointHealth(e, *counts.get(e.id, (0, 0))) for e in endpoints]
    recent = session.execute(
        select(WebhookAttempt, WebhookDelivery, WebhookEndpoint.partner_id)
        .join(WebhookDelivery, WebhookDelivery.id == WebhookAttempt.delivery_id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .order_by(WebhookAttempt.id.desc())
        .limit(HEALTH_LIMIT)
    ).all()
    return listed, [(a, d, p) for a, d, p in recent]
