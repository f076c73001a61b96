"""Webhook endpoints of a partner: registration (with the outbound-safety check of the URL),
listing, update, deletion, secret rotation, test pings, recovery; and the secrets they sign with.

A secret is ``whsec_`` and the base64 of 32 random bytes (the Standard Webhooks format), shown
once when created or rotated and stored only sealed (AES-GCM under ``COALITION_SECRET_KEY``,
bound to the endpoint id, as API key secrets are). After a rotation the previous secret keeps
signing alongside the new one for :data:`ROTATION_OVERLAP`.

Outbound safety (:func:`check_url`): only ``http`` and ``https``; a host that resolves to any
address that is not globally routable (loopback, private, link-local and so the cloud metadata
address, unique-local, shared, reserved, multicast) is refused unless
``COALITION_WEBHOOK_ALLOW_PRIVATE`` is on. The dispatcher checks again at delivery and connects
to the address it checked.
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from coalition import outbox, text
from coalition.errors import Conflict, NotFound, ValidationFailed
from coalition.ids import new_id
from coalition.outbox import (
    DeliveryStatus,
    EventType,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from partners.keys import seal, unseal
from partners.models import Partner

SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)
SECRET_BYTES = 32
ROTATION_OVERLAP = timedelta(hours=24)
MAX_ENDPOINTS_PER_PARTNER = 10
#: The longest endpoint description.
DESCRIPTION_MAX = 500
MAX_URL_LENGTH = 2048
#: Event types an endpoint may subscribe to (``ping`` always reaches it).
SUBSCRIBABLE = tuple(t for t in outbox.EVENT_TYPES if t != EventType.PING)
#: Deliveries one recovery may send again (the oldest first; call again for the rest).
RECOVER_BATCH = 10_000

Resolver = Callable[[str, int], Sequence[str]]


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (the system resolver)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


#: IPv6 prefixes whose last 32 bits are an IPv4 address: IPv4-compatible (``::a.b.c.d``,
#: deprecated) and the well-known NAT64 prefix (RFC 6052). The local-use NAT64 prefix
#: (``64:ff9b:1::/48``, RFC 8215) embeds it at a place of the network's choosing: refused whole.
_IPV4_IN_LAST_32_BITS = (ipaddress.IPv6Network("::/96"), ipaddress.IPv6Network("64:ff9b::/96"))
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def _public_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not ip.is_multicast


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, by which a network may reach them:
    IPv4-mapped, IPv4-compatible, NAT64, 6to4 and Teredo (its server and its client)."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if any(ip in prefix for prefix in _IPV4_IN_LAST_32_BITS):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def is_public(address: str) -> bool:
    """True for a globally routable unicast address. An IPv4-mapped IPv6 address is judged by
    its IPv4; any other IPv6 form that carries an IPv4 address (IPv4-compatible, NAT64, 6to4,
    Teredo) must be public itself and carry only public IPv4 addresses."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv4Address):
        return _public_ip(ip)
    if ip.ipv4_mapped is not None:
        return _public_ip(ip.ipv4_mapped)
    if ip in _LOCAL_NAT64:
        return False
    return _public_ip(ip) and all(_public_ip(v4) for v4 in embedded_ipv4(ip))


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: where to connect (``address``) and what to ask for (``url``, ``host``)."""

    url: str
    scheme: str
    host: str
    port: int
    address: str


def check_url(
    url: str, *, allow_private: bool, resolver: Resolver = resolve, path: str = "$.url"
) -> Target:
    """The URL's target, or ValidationFailed at ``path``: not http(s), no host, user info,
    longer than :data:`MAX_URL_LENGTH`, a host that does not resolve, or (unless
    ``allow_private``) one that resolves to an address that is not public."""
    if len(url) > MAX_URL_LENGTH:
        raise ValidationFailed.at(path, f"at most {MAX_URL_LENGTH} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise ValidationFailed.at(path, "a URL has no white space or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValidationFailed.at(path, "not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValidationFailed.at(path, "only http and https URLs are allowed")
    host = parts.hostname
    if not host:
        raise ValidationFailed.at(path, "the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise ValidationFailed.at(path, "a webhook URL carries no user name or password")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    try:
        addresses = list(resolver(host, port))
    except (OSError, UnicodeError):
        addresses = []
    if not addresses:
        raise ValidationFailed.at(path, f"the host {host} does not resolve")
    if not allow_private:
        refused = [a for a in addresses if not is_public(a)]
        if refused:
            raise ValidationFailed.at(
                path,
                f"the host {host} resolves to {refused[0]}, a loopback, private, link-local or "
                "otherwise non-public address",
            )
    return Target(url, parts.scheme, host, port, addresses[0])


def _events(events: list[str] | None) -> str | None:
    if events is None:
        return None
    if not events:
        raise ValidationFailed.at("$.events", "omit events to subscribe to all; [] is none")
    for i, name in enumerate(events):
        if name not in SUBSCRIBABLE:
            raise ValidationFailed.at(f"$.events[{i}]", f"one of {', '.join(SUBSCRIBABLE)}")
    return " ".join(sorted(set(events)))


def new_secret() -> tuple[str, bytes]:
    """A secret as shown (``whsec_...``) and its raw bytes."""
    raw = secrets.token_bytes(SECRET_BYTES)
    return SECRET_PREFIX + base64.b64encode(raw).decode(), raw


def signing_secrets(endpoint: WebhookEndpoint, secret_key: bytes, now: datetime) -> list[bytes]:
    """The raw secrets that sign a delivery now: the current one, and the previous one during
    its overlap."""
    found = [unseal(secret_key, endpoint.id, endpoint.secret_sealed)]
    if (
        endpoint.previous_secret_sealed is not None
        and endpoint.previous_expires_at is not None
        and now < endpoint.previous_expires_at
    ):
        found.append(unseal(secret_key, endpoint.id, endpoint.previous_secret_sealed))
    return found


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
        """Remove an endpoint and its deliveries."""
        endpoint = self.get(session, partner_id, endpoint_id)
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
            outbox.WebhookEvent(
                id=event_id,
                type=EventType.PING,
                partner_id=partner_id,
                payload=outbox.body_of(event_id, EventType.PING, now, data),
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
            select(WebhookDelivery, outbox.WebhookEvent.type)
            .join(outbox.WebhookEvent, outbox.WebhookEvent.id == WebhookDelivery.event_id)
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
            raise ValidationFailed.at("$.since", "a time in the past")
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
