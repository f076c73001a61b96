"""The audit log: every operator and finance action (who, which key, what, when, from which
address, the outcome), append-only.

An :class:`AuditEvent` is written once and never changed: there is no update or delete here,
and the database refuses both (a trigger, migration ``0005_security``). It never holds a
secret: the action is the method and the path as received (ids only, percent-encoded), never a
body or a response.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Index, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from coalition.db import Base, UTCDateTime
from coalition.ids import new_id
from coalition.pages import Page, newest_first

#: Longest action text kept (method, path and query; longer ones are cut, marked "...").
ACTION_MAX = 1024
ADDRESS_MAX = 64
OUTCOME_MAX = 64


class AuditEvent(Base):
    """One operator or finance action. Append-only."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_key_id_id", "key_id", "id"),
        Index("ix_audit_events_at", "at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    role: Mapped[str] = mapped_column(String(16))
    key_id: Mapped[str] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(ACTION_MAX))
    source_address: Mapped[str | None] = mapped_column(String(ADDRESS_MAX))
    #: The HTTP status; None for an action on the command line (``coalition init``).
    status: Mapped[int | None] = mapped_column(Integer)
    #: ``ok``, ``replayed`` (an idempotent repeat) or the problem type (``validation``...).
    outcome: Mapped[str] = mapped_column(String(OUTCOME_MAX))
    request_id: Mapped[str | None] = mapped_column(String(40))


def printable(text: str, limit: int) -> str:
    """``text`` with every character outside printable ASCII percent-encoded, at most
    ``limit`` characters: what an action or an address becomes before it is stored."""
    safe = urllib.parse.quote(text, safe=" /?&=:;,+@!$'()*[]~-._%")
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class Action:
    """What one request did, as the audit log records it."""

    role: str
    key_id: str
    action: str
    source_address: str | None
    status: int | None
    outcome: str
    request_id: str | None


#: The source address of actions taken on the service's own command line.
COMMAND_LINE = "command-line"


def record(session: Session, action: Action, now: datetime) -> AuditEvent:
    """Append one event (text fields made printable and bounded)."""
    event = AuditEvent(
        id=new_id("aud"),
        at=now,
        role=action.role,
        key_id=action.key_id,
        action=printable(action.action, ACTION_MAX),
        source_address=None
        if action.source_address is None
        else printable(action.source_address, ADDRESS_MAX),
        status=action.status,
        outcome=printable(action.outcome, OUTCOME_MAX),
        request_id=action.request_id,
    )
    session.add(event)
    session.flush()
    return event


def list_events(
    session: Session,
    *,
    key_id: str | None = None,
    role: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: str | None = None,
    limit: int = 100,
) -> Page[AuditEvent]:
    """Events newest first, filtered (:mod:`coalition.pages`)."""
    query = select(AuditEvent)
    if key_id is not None:
        query = query.where(AuditEvent.key_id == key_id)
    if role is not None:
        query = query.where(AuditEvent.role == role)
    if outcome is not None:
        query = query.where(AuditEvent.outcome == outcome)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if until is not None:
        query = query.where(AuditEvent.at < until)
    return newest_first(session, query, AuditEvent.id, before_id=before_id, limit=limit)
