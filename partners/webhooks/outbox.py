"""The outbox: the events a partner's endpoints are owed, written in the database transaction
of what they describe (docs/webhooks.md), and the ledger listener that notes them.

An event is recorded only when the partner concerned has at least one enabled endpoint
subscribed to its type, and with it one ``pending`` delivery per such endpoint. On PostgreSQL
both are one statement (a data-modifying CTE); on SQLite two. A partner without endpoints costs
one indexed lookup that inserts nothing. Because the rows are written in the same transaction,
an operation that rolls back leaves no event, and a committed one always has its event: the
dispatcher (:mod:`partners.webhooks.delivery`) sends what is pending, at least once, with the
event id as ``webhook-id``.

Events are noted on the session (:func:`note`; ledger transactions by
:func:`transactions_posted` and holds by :func:`hold_closed`, which the ledger's write path
calls through :data:`LISTENER`, registered by the package, ``partners/webhooks/__init__.py``)
and written when it commits, still inside its transaction. A single event (a signed request's)
is one statement that finds the subscribed endpoints itself, or rides the statement that stores
the request's response (:data:`RIDER`); for many (a bulk insert of 5,000 earns) one lookup per
partner and event type finds who is subscribed, then one executemany writes those events, their
bodies built then and only for them. The ledger may tell of transactions before their rows are
inserted. Only the events of transactions that exist at commit (and of holds closed by then)
are written: a savepoint rolled back after the note leaves none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from msgspec import UNSET
from sqlalchemy import delete, event, exists, select, text
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import TextClause

from coalition.db import dialect_of
from coalition.errors import InvariantViolated
from coalition.hot import HotStatement
from coalition.idempotency import SaveRider
from coalition.ids import new_id
from coalition.ledger.post import Header
from coalition.ledger.riders import Rider
from coalition.models import Hold, HoldStatus, Transaction
from coalition.shapes import row_as
from partners.queries import transaction_out
from partners.webhooks.events import (
    HOLD_EVENTS,
    TRANSACTION_EVENTS,
    EventData,
    EventType,
    HoldClosed,
    body_of,
)
from partners.webhooks.tables import DeliveryStatus, WebhookDelivery, WebhookEvent

# The event of a transaction by its row's ``kind`` string (no enum built per transaction on the
# bulk path).
_EVENT_OF_KIND = {kind.value: event for kind, event in TRANSACTION_EVENTS.items()}

#: How long delivered and failed deliveries (and then their events) are kept; ``recover`` reaches
#: this far back.
RETENTION = timedelta(days=30)
#: Rows one purge statement deletes at most.
PURGE_BATCH = 1000

#: Parameters are cast: PostgreSQL deduces one type per parameter, and ``:type`` is both a
#: column value and an operand of ``||``.
_ID, _TYPE, _PARTNER = "CAST(:id AS VARCHAR)", "CAST(:type AS VARCHAR)", "CAST(:partner AS VARCHAR)"


def _subscribed(partner: str, event_type: str) -> str:
    """An enabled endpoint of ``partner`` subscribed to ``event_type`` (``events`` NULL: all
    types), both SQL."""
    return (
        f"webhook_endpoints.partner_id = {partner} AND NOT webhook_endpoints.disabled"
        " AND (webhook_endpoints.events IS NULL"
        f" OR (' ' || webhook_endpoints.events || ' ') LIKE ('% ' || {event_type} || ' %'))"
    )


_SUBSCRIBED = _subscribed(_PARTNER, _TYPE)
#: The transaction an event describes (if any) was written, the hold it describes (if any)
#: closed: neither undone by a rolled-back savepoint.
_POSTED = (
    "(CAST(:txn AS VARCHAR) IS NULL"
    " OR EXISTS (SELECT 1 FROM transactions WHERE transactions.id = CAST(:txn AS VARCHAR)))"
    " AND (CAST(:hold AS VARCHAR) IS NULL OR EXISTS (SELECT 1 FROM holds"
    " WHERE holds.id = CAST(:hold AS VARCHAR) AND holds.status <> 'active'))"
)


#: One event, for the endpoints subscribed when it is written (``{subscribed}``).
_EVENT = (
    "INSERT INTO webhook_events (id, type, partner_id, payload, created_at, transaction_id)"
    " SELECT {id}, {type}, {partner}, {payload}, {at}, {txn}{source}"
    " WHERE EXISTS (SELECT 1 FROM webhook_endpoints WHERE {subscribed}){posted}"
)
#: Its deliveries, one per endpoint subscribed (``{where}``).
_DELIVERIES = (
    "INSERT INTO webhook_deliveries (event_id, endpoint_id, status, attempts,"
    " next_attempt_at, created_at) SELECT {event}, webhook_endpoints.id, 'pending', 0,"
    " {due}, {at} FROM {source} webhook_endpoints WHERE {where}"
)


def _from_event(subscribed: str, *, due: str, at: str) -> str:
    """The deliveries of the CTE ``event``'s row, one per endpoint ``subscribed``."""
    return _DELIVERIES.format(event="event.id", due=due, at=at, source="event,", where=subscribed)


def _event_ctes(event: str, subscribed: str, *, due: str, at: str) -> str:
    """``event`` (an :data:`_EVENT`) and its deliveries as the CTEs ``event`` and
    ``deliveries`` of a statement (PostgreSQL)."""
    deliveries = _from_event(subscribed, due=due, at=at)
    return f"event AS ({event} RETURNING id), deliveries AS ({deliveries})"


def _statements() -> tuple[str, TextClause, TextClause, TextClause]:
    """(PostgreSQL's two CTEs, one statement of them, SQLite's event insert, SQLite's delivery
    insert)."""
    event = _EVENT.format(
        id=_ID, type=_TYPE, partner=_PARTNER, payload=":payload", at=":at",
        txn="CAST(:txn AS VARCHAR)", source="", subscribed=_SUBSCRIBED, posted=f" AND {_POSTED}",
    )  # fmt: skip
    written = f"{_SUBSCRIBED} AND EXISTS (SELECT 1 FROM webhook_events WHERE id = {_ID})"  # noqa: S608 (built from constants)
    return (
        _event_ctes(event, _SUBSCRIBED, due=":due", at=":at"),
        text(
            f"WITH event AS ({event} RETURNING id) {_from_event(_SUBSCRIBED, due=':due', at=':at')}"
        ),
        text(event),
        text(_DELIVERIES.format(event=_ID, due=":due", at=":at", source="", where=written)),
    )


#: ``event`` and ``deliveries``: the CTEs that write one event and its deliveries (PostgreSQL),
#: for a statement of a signed request's to carry (:data:`RIDER`).
EVENT_CTES, _RECORD_PG, _RECORD_EVENTS, _RECORD_DELIVERIES = _statements()


_RECORD_ONE_PG = HotStatement(_RECORD_PG)


def _write(session: Session, rows: list[dict[str, Any]]) -> None:
    if dialect_of(session) == "postgresql":
        if len(rows) == 1:  # a signed request's event
            _RECORD_ONE_PG.rows(session, rows[0])
        else:
            session.execute(_RECORD_PG, rows)
    else:
        session.execute(_RECORD_EVENTS, rows)
        session.execute(_RECORD_DELIVERIES, rows)


def take_one(session: Session) -> dict[str, Any] | None:
    """The one event noted in the session's transaction (a signed request's), taken out of
    the outbox's commit-time write: the parameters of :data:`EVENT_CTES`, for a statement the
    caller makes before the commit anyway (on PostgreSQL only). ``None`` when none or several
    are noted (they are written at commit)."""
    noted: list[_Noted] | None = session.info.get(_PENDING)
    if noted is None or len(noted) != 1:
        return None
    del session.info[_PENDING]
    return noted[0].row()


#: A signed request's one event and its deliveries, written by the statement that stores the
#: request's response (:func:`coalition.idempotency.save`, passed by ``api.idempotency``)
#: instead of one of their own at commit: no round trip more per request for the outbox.
RIDER = SaveRider(EVENT_CTES, take_one)


#: A ledger transaction's event and its deliveries, riding the statement that writes the
#: transaction (its CTE ``t``; :mod:`coalition.ledger.riders`): written with it, for the
#: endpoints subscribed then, without a body (:func:`sent_body`).
_EVENT_SUBSCRIBED = _subscribed("CAST(:event_partner AS VARCHAR)", "CAST(:event_type AS VARCHAR)")
_EVENT_OF_HEADER = _EVENT.format(
    id=":event_id", type="CAST(:event_type AS VARCHAR)", partner="CAST(:event_partner AS VARCHAR)",
    payload="NULL", at=":event_at", txn="t.id", source=" FROM t", subscribed=_EVENT_SUBSCRIBED,
    posted="",
)  # fmt: skip
_EVENT_RIDING = _event_ctes(_EVENT_OF_HEADER, _EVENT_SUBSCRIBED, due=":event_at", at=":event_at")
#: ``Session.info`` key: the transactions whose events rode their statements.
_CARRIED = "coalition_outbox_carried"


def _event_values(header: Header) -> dict[str, Any] | None:
    event_type = _EVENT_OF_KIND.get(header.kind)
    if event_type is None or header.partner_id is None:
        return None
    return {
        "event_id": new_id("evt"),
        "event_type": event_type.value,
        "event_partner": header.partner_id,
        "event_at": header.posted_at,
    }


def _event_carried(session: Session, header: Header) -> None:
    session.info.setdefault(_CARRIED, set()).add(header.id)


#: The event of the transaction a signed request posts, riding its statement (passed by
#: ``api.idempotency``): no statement of its own, and none noted at commit.
EVENT_RIDER = Rider(_EVENT_RIDING, _event_values, _event_carried)


@dataclass(frozen=True, slots=True)
class _Noted:
    """An event noted in the session's transaction, written (or not) when it commits."""

    event_type: EventType
    partner_id: str
    #: The event's data; ``None`` for a ledger transaction's event, whose body is made from
    #: the transaction's row when it is sent (:func:`sent_body`).
    data: Callable[[], EventData] | None
    at: datetime
    due: datetime
    transaction_id: str | None
    hold_id: str | None

    def row(self) -> dict[str, Any]:
        event_id = new_id("evt")
        data = self.data
        payload = None if data is None else body_of(event_id, self.event_type, self.at, data())
        return {
            "id": event_id,
            "type": self.event_type.value,
            "partner": self.partner_id,
            "payload": payload,
            "at": self.at,
            "due": self.due,
            "txn": self.transaction_id,
            "hold": self.hold_id,
        }


def note(
    session: Session,
    event_type: EventType,
    partner_id: str,
    data: EventData | Callable[[], EventData],
    *,
    at: datetime,
    due: datetime | None = None,
    transaction_id: str | None = None,
    hold_id: str | None = None,
) -> None:
    """Note an event for ``partner_id``'s subscribed endpoints, to be written when the session
    commits, inside its transaction. ``data`` may be a function: it is called only if some
    endpoint is subscribed. ``due``: when to send it (default ``at``, at once: a rate card that
    starts next month is announced when it starts). An event of a ledger transaction is written
    only if that transaction is, that of a hold only if the hold is closed (neither undone by a
    rolled-back savepoint)."""
    make = data if callable(data) else (lambda: data)
    session.info.setdefault(_PENDING, []).append(
        _Noted(event_type, partner_id, make, at, due or at, transaction_id, hold_id)
    )


def transactions_posted(session: Session, txns: Sequence[Transaction]) -> None:
    """Note the events of posted transactions (those whose partner is told about their kind;
    the ledger's write path calls this for every transaction, however it was written)."""
    pending: list[_Noted] | None = None
    carried: set[str] = session.info.get(_CARRIED, set())
    for txn in txns:
        event_type = _EVENT_OF_KIND.get(txn.kind)
        if event_type is None or txn.partner_id is None or txn.id in carried:
            continue
        if pending is None:
            pending = session.info.setdefault(_PENDING, [])
        # What note() records, without its keyword handling: a bulk import notes 5,000 a batch.
        pending.append(
            _Noted(
                event_type,
                txn.partner_id,
                None,
                txn.posted_at,
                txn.posted_at,
                txn.id,
                None,
            )
        )


def hold_closed(
    session: Session,
    hold: Hold,
    status: HoldStatus,
    now: datetime,
    *,
    captured_points: int | None = None,
    transaction_id: str | None = None,
) -> None:
    """Note ``hold.captured``, ``hold.voided`` or ``hold.expired`` (the ledger calls this
    wherever a hold leaves ``active``). A capture's burn has its own ``transaction.burned``
    event; ``transaction_id`` here names it."""
    captured = status == HoldStatus.CAPTURED
    data = row_as(
        HoldClosed,
        hold,
        status=status.value,
        closed_at=now,
        captured_points=captured_points if captured else UNSET,
        transaction_id=transaction_id if captured else UNSET,
    )
    note(session, HOLD_EVENTS[status], hold.partner_id, data, at=now, hold_id=hold.id)


#: ``Session.info`` key: the events noted in the session's current transaction.
_PENDING = "coalition_outbox_pending"
#: Whether ``:partner`` has an enabled endpoint subscribed to ``:type``.
_ANY_SUBSCRIBED = text(f"SELECT EXISTS (SELECT 1 FROM webhook_endpoints WHERE {_SUBSCRIBED})")  # noqa: S608 (built from constants)


def sent_body(event: WebhookEvent, txn: Transaction | None) -> bytes:
    """The bytes ``event`` is sent as: its payload, or, for a ledger transaction's event
    (stored without one), the contract's body with that transaction (``txn``, its row) as its
    data, rendered when it is sent: the row never changes and the rendering is a function of it
    alone, so every attempt sends the same bytes (docs/architecture.md, decision 28)."""
    if event.payload is not None:
        return event.payload.encode()
    if txn is None or txn.id != event.transaction_id:
        raise InvariantViolated(f"event {event.id} has neither a payload nor its transaction")
    return body_of(event.id, event.type, event.created_at, transaction_out(txn)).encode()


@event.listens_for(Session, "before_commit")
def _write_noted(session: Session) -> None:
    """Write the noted events. One event (a signed request's) goes out in one statement that
    finds the subscribed endpoints itself; of many (a bulk insert's), the partners' subscriptions
    are read first, one lookup per partner and event type, so that no body is built for a
    partner nobody listens to."""
    noted: list[_Noted] | None = session.info.pop(_PENDING, None)
    if not noted:
        return
    if len(noted) > 1:
        kinds = {(n.partner_id, n.event_type) for n in noted}
        subscribed = {
            (partner, event_type)
            for partner, event_type in sorted(kinds)
            if session.scalar(_ANY_SUBSCRIBED, {"partner": partner, "type": event_type.value})
        }
        noted = [n for n in noted if (n.partner_id, n.event_type) in subscribed]
    if noted:
        _write(session, [n.row() for n in noted])


@event.listens_for(Session, "after_rollback")
@event.listens_for(Session, "after_commit")
def _forget_noted(session: Session) -> None:
    session.info.pop(_PENDING, None)
    session.info.pop(_CARRIED, None)


def purge(session: Session, now: datetime) -> int:
    """Delete up to :data:`PURGE_BATCH` deliveries done (delivered or failed) before the
    retention, and up to as many events of before it that no delivery refers to any more; how
    many rows."""
    cutoff = now - RETENTION
    done = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status != DeliveryStatus.PENDING, WebhookDelivery.created_at < cutoff
        )
        .order_by(WebhookDelivery.created_at)
        .limit(PURGE_BATCH)
    )
    deliveries = session.execute(
        delete(WebhookDelivery).where(WebhookDelivery.id.in_(done.scalar_subquery()))
    )
    orphans = (
        select(WebhookEvent.id)
        .where(
            WebhookEvent.created_at < cutoff,
            ~exists().where(WebhookDelivery.event_id == WebhookEvent.id),
        )
        .order_by(WebhookEvent.created_at)
        .limit(PURGE_BATCH)
    )
    events = session.execute(
        delete(WebhookEvent).where(WebhookEvent.id.in_(orphans.scalar_subquery()))
    )
    return int(deliveries.rowcount) + int(events.rowcount)  # type: ignore[attr-defined]


class _Outbox:
    """The outbox as a ledger listener (:mod:`coalition.ledger.listeners`)."""

    transactions_posted = staticmethod(transactions_posted)
    hold_closed = staticmethod(hold_closed)


#: What the package registers with the ledger (``partners/webhooks/__init__.py``).
LISTENER = _Outbox()
