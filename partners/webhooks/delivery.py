"""Delivery: the dispatcher sends the outbox's pending deliveries, signed per Standard Webhooks
(:mod:`partners.webhooks.signing`), on the retry schedule (:data:`RETRY_SCHEDULE_S`), and
disables an endpoint that is gone or has failed for too long (:data:`FAILING_DISABLES_AFTER`).

One round (:meth:`Dispatcher.run_once`):

1. **claim** up to :data:`BATCH` due deliveries of enabled endpoints. On PostgreSQL they are
   locked ``FOR UPDATE SKIP LOCKED`` in a transaction that stays open while they are sent and
   commits their outcomes: several dispatchers never take the same one, and one killed
   mid-batch loses its connection, so its deliveries are due again at once (delivery is at
   least once, with the same ``webhook-id``). On SQLite (one dispatcher) a short transaction
   pushes their ``next_attempt_at`` a lease ahead (:data:`LEASE_S`) instead;
2. **send** them concurrently (httpx, at most :data:`CONCURRENCY` at once and
   :data:`PER_ENDPOINT` per endpoint), each with a :data:`TIMEOUT_S` timeout, no redirects, the
   response read up to :data:`RESPONSE_EXCERPT_BYTES`; each URL is resolved and checked again
   (:func:`partners.webhooks.urls.check_url`, once per batch) and the request goes to the
   address that was checked;
3. **record** every attempt (a row of its own in ``webhook_attempts``) and commit:
   ``delivered`` on a 2xx; otherwise the next attempt per :data:`RETRY_SCHEDULE_S` (with
   jitter, or later when ``Retry-After`` says so), ``failed`` once the schedule is spent; a
   ``410`` disables the endpoint with its reason, and so do 5 days of nothing but failures.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from coalition.config import Settings
from coalition.db import UTCDateTime, dialect_of, utcnow
from coalition.errors import ValidationFailed
from coalition.models import Transaction
from partners.webhooks.outbox import sent_body
from partners.webhooks.signing import signature, signing_secrets
from partners.webhooks.tables import DeliveryStatus, WebhookDelivery, WebhookEndpoint, WebhookEvent
from partners.webhooks.urls import Resolver, Target, check_url, resolve

log = logging.getLogger("coalition.webhooks")

#: Delay before each attempt (the contract's schedule): immediately, 5 s, 5 min, 30 min, 2 h,
#: 5 h, 10 h, 10 h; after the eighth attempt fails the delivery is ``failed``.
RETRY_SCHEDULE_S = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
#: Each delay is stretched by up to this share at random, so retries of many deliveries spread.
JITTER = 0.1
#: A ``Retry-After`` later than the schedule is honoured up to this.
MAX_RETRY_AFTER_S = 36000
TIMEOUT_S = 15.0
#: A claimed delivery is due again after this, should its dispatcher die before recording it.
LEASE_S = 120
BATCH = 200
CONCURRENCY = 64
PER_ENDPOINT = 16
RESPONSE_EXCERPT_BYTES = 1024
#: Rounds one run of the job does at most while full batches are due.
MAX_ROUNDS = 20
USER_AGENT = "coalition-webhooks/1"
#: An endpoint every attempt to which failed for this long is disabled (its owner sees why in
#: ``disabled_reason``; re-enabling it starts the count again). So is one that answers ``410``.
FAILING_DISABLES_AFTER = timedelta(days=5)


def next_delay_s(attempts: int, retry_after_s: float | None, rng: random.Random) -> float | None:
    """Seconds until the next attempt after ``attempts`` failed ones; None: give up."""
    if attempts >= len(RETRY_SCHEDULE_S):
        return None
    delay = RETRY_SCHEDULE_S[attempts] * (1 + JITTER * rng.random())
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
    return delay


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date); None if absent or invalid."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery to send: its endpoint's URL and secrets, the event's body."""

    delivery_id: int
    endpoint_id: str
    url: str
    event_id: str
    body: bytes
    secrets: tuple[bytes, ...]
    attempts: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt gave."""

    delivery_id: int
    endpoint_id: str
    attempts: int
    status_code: int | None
    latency_ms: int
    error: str | None
    excerpt: str | None
    retry_after_s: float | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass
class Dispatcher:
    """Sends due deliveries; see the module docstring."""

    settings: Settings
    sessions: sessionmaker[Session]
    clock: Callable[[], datetime] = utcnow
    resolver: Resolver = resolve
    transport: httpx.AsyncBaseTransport | None = None
    batch: int = BATCH
    rng: random.Random = field(default_factory=random.Random)
    timeout_s: float = TIMEOUT_S

    def run(self) -> int:
        """Rounds until fewer than a full batch was due (at most :data:`MAX_ROUNDS`), on one
        HTTP client (its connections stay open across rounds); how many attempts were made
        (the scheduler's job)."""
        return asyncio.run(self._rounds(MAX_ROUNDS))

    def run_once(self) -> int:
        """Claim, send and record one batch; how many attempts were made."""
        return asyncio.run(self._rounds(1))

    async def _rounds(self, rounds: int) -> int:
        total = 0
        async with self._client() as client:
            for _ in range(rounds):
                with self.sessions() as session:
                    claimed = await asyncio.to_thread(self.claim, session)
                    if not claimed:
                        break
                    outcomes = await self.send_all(client, claimed)
                    await asyncio.to_thread(self.record, session, outcomes)
                total += len(outcomes)
                if len(claimed) < self.batch:
                    break
        return total

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=self.transport,
            timeout=httpx.Timeout(self.timeout_s),
            follow_redirects=False,
            trust_env=False,
            headers={"user-agent": USER_AGENT},
            limits=httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY),
        )

    # --- claim ------------------------------------------------------------------------

    def claim(self, s: Session) -> list[Claimed]:
        """Take due deliveries of enabled endpoints in a transaction begun on ``s``.

        On PostgreSQL they stay locked (``FOR UPDATE SKIP LOCKED``) in that transaction until
        :meth:`record` commits their outcomes: another dispatcher skips them, and if this one
        dies its connection closes and they are due again at once. On SQLite (one dispatcher; a
        transaction held open would stop every writer) they are leased for :data:`LEASE_S` and
        the transaction commits here."""
        now = self.clock()
        s.begin()
        held = dialect_of(s) == "postgresql"
        due = (
            select(WebhookDelivery.id)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(
                WebhookDelivery.status == DeliveryStatus.PENDING,
                WebhookDelivery.next_attempt_at <= now,
                WebhookEndpoint.disabled.is_(False),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(self.batch)
        )
        if held:
            due = due.with_for_update(of=WebhookDelivery, skip_locked=True)
        ids = list(s.scalars(due))
        if not ids:
            s.rollback()
            return []
        if not held:
            s.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(ids))
                .values(next_attempt_at=now + timedelta(seconds=LEASE_S))
                .execution_options(synchronize_session=False)
            )
        rows = s.execute(
            select(WebhookDelivery, WebhookEndpoint, WebhookEvent, Transaction)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
            .outerjoin(
                Transaction,
                (Transaction.id == WebhookEvent.transaction_id) & WebhookEvent.payload.is_(None),
            )
            .where(WebhookDelivery.id.in_(ids))
            .order_by(WebhookDelivery.id)
        ).all()
        key = self.settings.secret_key
        claimed = [
            Claimed(
                delivery_id=d.id,
                endpoint_id=e.id,
                url=e.url,
                event_id=d.event_id,
                body=sent_body(event, txn),
                secrets=tuple(signing_secrets(e, key, now)),
                attempts=d.attempts,
            )
            for d, e, event, txn in rows
        ]
        if not held:
            s.commit()
        return claimed

    # --- send -------------------------------------------------------------------------

    async def send_all(self, client: httpx.AsyncClient, claimed: list[Claimed]) -> list[Outcome]:
        """Send every claimed delivery, bounded overall and per endpoint; each URL of the batch
        is resolved and checked once."""
        overall = asyncio.Semaphore(CONCURRENCY)
        per_endpoint: dict[str, asyncio.Semaphore] = {}
        targets: dict[str, asyncio.Task[Target | str]] = {}

        async def one(c: Claimed) -> Outcome:
            if c.url not in targets:
                targets[c.url] = asyncio.create_task(asyncio.to_thread(self.target, c.url))
            gate = per_endpoint.setdefault(c.endpoint_id, asyncio.Semaphore(PER_ENDPOINT))
            async with overall, gate:
                return await self.send(client, c, await targets[c.url])

        return list(await asyncio.gather(*(one(c) for c in claimed)))

    def target(self, url: str) -> Target | str:
        """Where to connect for ``url`` (resolved and checked now), or why not."""
        try:
            return check_url(
                url, allow_private=self.settings.webhook_allow_private, resolver=self.resolver
            )
        except ValidationFailed as exc:
            return f"refused: {exc.errors[0]['message']}"[:500]

    async def send(self, client: httpx.AsyncClient, c: Claimed, target: Target | str) -> Outcome:
        """One attempt to the checked ``target``: sign, POST, read a capped excerpt."""
        started = time.monotonic()

        def outcome(
            status: int | None, error: str | None, excerpt: str | None, after: float | None
        ) -> Outcome:
            latency = int((time.monotonic() - started) * 1000)
            return Outcome(
                c.delivery_id, c.endpoint_id, c.attempts + 1, status, latency, error, excerpt, after
            )

        if isinstance(target, str):
            return outcome(None, target, None, None)
        timestamp = int(time.time())  # the real send time: receivers check it against theirs
        headers = {
            "content-type": "application/json",
            "webhook-id": c.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(c.secrets, c.event_id, timestamp, c.body),
            "host": _host_header(target),
        }
        request = client.build_request(
            "POST",
            _address_url(target),
            content=c.body,
            headers=headers,
            extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
        )
        try:
            response = await client.send(request, stream=True)
            try:
                excerpt = await _read_capped(response)
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            return outcome(None, f"timed out after {self.timeout_s:g} s", None, None)
        except httpx.HTTPError as exc:
            return outcome(None, f"{type(exc).__name__}: {exc}"[:500], None, None)
        after = retry_after_s(response.headers.get("retry-after"), self.clock())
        return outcome(response.status_code, None, excerpt, after)

    # --- record -----------------------------------------------------------------------

    def record(self, s: Session, outcomes: list[Outcome]) -> None:
        """Write each attempt (its delivery's new state and a row of its own, one executemany
        each) and commit, in the claim's transaction on PostgreSQL; then apply the disable
        policy (:meth:`_judge_endpoints`)."""
        now = self.clock()
        rows = [self._attempt_row(o, now) for o in outcomes]
        if rows:
            s.execute(_INSERT_ATTEMPT, rows)
            s.connection().execute(_RECORD_ATTEMPT, rows)
        self._judge_endpoints(s, outcomes, now)
        s.commit()

    def _attempt_row(self, o: Outcome, now: datetime) -> dict[str, object]:
        """An attempt's delivery state: ``delivered`` on a 2xx; else the next attempt per the
        retry schedule, or ``failed`` once it is spent (at once on a ``410``)."""
        status, next_at = DeliveryStatus.PENDING.value, None
        if o.delivered:
            status = DeliveryStatus.DELIVERED
        else:
            delay = None
            if o.status_code != 410:
                delay = next_delay_s(o.attempts, o.retry_after_s, self.rng)
            if delay is None:
                status = DeliveryStatus.FAILED
            else:
                next_at = now + timedelta(seconds=delay)
        return {
            "delivery_id": o.delivery_id,
            "status": status,
            "attempts": o.attempts,
            "next_attempt_at": next_at,
            "last_attempt_at": now,
            "last_status_code": o.status_code,
            "last_latency_ms": o.latency_ms,
            "last_error": o.error,
            "last_response": o.excerpt,
        }

    @staticmethod
    def _judge_endpoints(s: Session, outcomes: list[Outcome], now: datetime) -> None:
        """The disable policy: an endpoint that answered ``410`` is disabled; so is one whose
        every attempt has failed for :data:`FAILING_DISABLES_AFTER`; a success ends an
        endpoint's failing streak."""
        succeeded = {o.endpoint_id for o in outcomes if o.delivered}
        failing = {o.endpoint_id for o in outcomes} - succeeded
        gone = {o.endpoint_id for o in outcomes if not o.delivered and o.status_code == 410}
        if succeeded:
            s.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id.in_(sorted(succeeded)))
                .values(failing_since=None)
            )
        if failing:
            s.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id.in_(sorted(failing)))
                .values(failing_since=func.coalesce(WebhookEndpoint.failing_since, now))
            )
        for endpoint_id in sorted(gone):
            _disable(s, endpoint_id, "the endpoint answered 410 Gone", now)
        stale = now - FAILING_DISABLES_AFTER
        for endpoint_id, since in s.execute(
            select(WebhookEndpoint.id, WebhookEndpoint.failing_since).where(
                WebhookEndpoint.id.in_(sorted(failing - gone)),
                WebhookEndpoint.disabled.is_(False),
                WebhookEndpoint.failing_since <= stale,
            )
        ):
            reason = (
                f"every delivery failed from {since:%Y-%m-%d %H:%M} UTC for"
                f" {FAILING_DISABLES_AFTER.days} days; fix the receiver, then enable it again"
                " (PATCH disabled: false): what is pending goes out then"
            )
            _disable(s, endpoint_id, reason, now)


def _disable(s: Session, endpoint_id: str, reason: str, now: datetime) -> None:
    s.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id)
        .values(disabled=True, disabled_reason=reason, updated_at=now)
    )
    log.warning("webhook endpoint %s disabled: %s", endpoint_id, reason)


#: One attempt's own row, unless its delivery is gone meanwhile (its endpoint deleted while
#: SQLite's lease ran; on PostgreSQL the claim's row lock keeps it).
_INSERT_ATTEMPT = text(
    "INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at, status_code, latency_ms,"
    " error, response_excerpt) SELECT :delivery_id, CAST(:attempts AS INTEGER), :last_attempt_at,"
    " CAST(:last_status_code AS INTEGER), CAST(:last_latency_ms AS BIGINT),"
    " CAST(:last_error AS VARCHAR), CAST(:last_response AS VARCHAR)"
    " WHERE EXISTS (SELECT 1 FROM webhook_deliveries WHERE id = :delivery_id)"
).bindparams(bindparam("last_attempt_at", type_=UTCDateTime()))

#: One attempt's result; a delivery no longer pending (recovered, deleted) is left alone.
_RECORD_ATTEMPT = (
    update(WebhookDelivery)
    .where(
        WebhookDelivery.id == bindparam("delivery_id"),
        WebhookDelivery.status == DeliveryStatus.PENDING,
    )
    .values(
        {
            name: bindparam(name)
            for name in (
                "status",
                "attempts",
                "next_attempt_at",
                "last_attempt_at",
                "last_status_code",
                "last_latency_ms",
                "last_error",
                "last_response",
            )
        }
    )
)


def _host_header(target: Target) -> str:
    default = 443 if target.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.port == default else f"{host}:{target.port}"


def _address_url(target: Target) -> str:
    """The URL with its host replaced by the checked address (the connection goes there)."""
    parts = httpx.URL(target.url)
    return str(parts.copy_with(host=target.address, port=target.port))


async def _read_capped(response: httpx.Response) -> str:
    excerpt = b""
    async for chunk in response.aiter_raw():
        excerpt += chunk
        if len(excerpt) >= RESPONSE_EXCERPT_BYTES:
            break
    return excerpt[:RESPONSE_EXCERPT_BYTES].decode("utf-8", "replace")
