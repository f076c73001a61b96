"""Sign-in to the web console and to a member's own page: single-use links, then sessions.

A **link** is a random token (256 bits) given out once, as a URL; the database keeps only its
SHA-256. It is valid for :data:`CONSOLE_LINK_TTL` (operator, finance, a partner's view) or
:data:`MEMBER_LINK_TTL` (a member's page) and is spent by one conditional ``UPDATE ... WHERE
used_at IS NULL AND expires_at > now``: of two requests racing with one link, exactly one
signs in.

Spending a link opens a **session**: another random token, kept by the browser in a cookie,
stored as its SHA-256 too. A session ends when signed out, after :data:`IDLE_TIMEOUT` without
a request, and at the latest :data:`MAX_SESSION` after it opened. Its id (``csn_...``) is what
the audit log and the statement history name as the key that acted.

A form of a session carries its CSRF token, the HMAC-SHA256 (under ``COALITION_SECRET_KEY``)
of the session token's hash: the server can check it without storing it, and a page of another
site can neither read nor forge it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, delete, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from coalition.db import Base, UTCDateTime
from coalition.errors import NotFound, UnknownMember, ValidationFailed
from coalition.ids import MEMBER_ID_MAX_LENGTH, is_member_id, new_id
from coalition.models import ID, Member
from partners.models import ApiKey, Partner

CONSOLE_LINK_TTL = timedelta(minutes=10)
MEMBER_LINK_TTL = timedelta(minutes=15)
IDLE_TIMEOUT = timedelta(minutes=30)
MAX_SESSION = timedelta(hours=12)
#: Who a link signs in: the operator's staff, a partner's staff, or a member.
ROLES = ("operator", "finance", "partner", "member")
STAFF_ROLES = ("operator", "finance")
TOKEN_BYTES = 32
#: A session's ``last_seen_at`` is written at most this often (a page view is then a read).
TOUCH_EVERY = timedelta(minutes=1)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


#: Staff of the operator name no one; a partner's view names its partner; a member's page names
#: the member and, when a partner minted the link, that partner (the page then shows only that
#: partner's dealings with the member); a member link the operator minted names no partner and
#: opens the member's whole coalition history.
WHO = (
    "(role IN ('operator', 'finance') AND partner_id IS NULL AND member_id IS NULL)"
    " OR (role = 'partner' AND partner_id IS NOT NULL AND member_id IS NULL)"
    " OR (role = 'member' AND member_id IS NOT NULL)"
)


class SignInLink(Base):
    """A single-use sign-in link: the SHA-256 of its token, whom it signs in, until when."""

    __tablename__ = "sign_in_links"
    __table_args__ = (
        CheckConstraint(_in("role", ROLES), name="role"),
        CheckConstraint(WHO, name="who"),
        Index("ix_sign_in_links_expires_at", "expires_at"),
    )

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    #: The partner whose view it opens, or (member links) the partner that asked for it: none
    #: when the operator minted a member link (the member's whole history).
    partner_id: Mapped[str | None] = mapped_column(ForeignKey("partners.id"))
    member_id: Mapped[str | None] = mapped_column(ForeignKey("members.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The finance (or operator) key the session acts for (``coalition console-link --key``):
    #: the person four-eyes rules count it as (settlement/payments/bank_accounts.py).
    key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"))


class ConsoleSession(Base):
    """A signed-in browser: the SHA-256 of its cookie's token and whom it signed in."""

    __tablename__ = "console_sessions"
    __table_args__ = (
        CheckConstraint(_in("role", ROLES), name="role"),
        CheckConstraint(WHO, name="who"),
        Index("ix_console_sessions_expires_at", "expires_at"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    partner_id: Mapped[str | None] = mapped_column(ForeignKey("partners.id"))
    member_id: Mapped[str | None] = mapped_column(String(MEMBER_ID_MAX_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The latest it may last (:data:`MAX_SESSION` after it opened).
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The key the session acts for, from its link (None: not tied to a key).
    key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"))


def token_hash(token: str) -> str:
    """The SHA-256 (hex) under which a link's or a session's token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class NewLink:
    """A link as made: its token (in the URL, shown once) and when it stops working."""

    token: str
    expires_at: datetime


def issue_link(
    session: Session,
    *,
    role: str,
    now: datetime,
    partner_id: str | None = None,
    member_id: str | None = None,
    key_id: str | None = None,
) -> NewLink:
    """A sign-in link: ``operator`` or ``finance`` (no partner), ``partner`` (its view), or
    ``member`` (the member's page: asked for by ``partner_id``, it shows only that partner's
    dealings with the member; without one, minted by the operator, the whole coalition
    history). NotFound for an unknown partner, UnknownMember for an unknown member.
    ``key_id`` (staff only): the unrevoked key of that role the session will act for, the
    person four-eyes rules count it as."""
    if role not in ROLES:
        raise ValidationFailed.at("role", f"one of {', '.join(ROLES)}")
    if role == "partner" and partner_id is None:
        raise ValidationFailed.at("partner_id", "a partner's link names the partner")
    if role in STAFF_ROLES and partner_id is not None:
        raise ValidationFailed.at("partner_id", "the operator's staff links name no partner")
    if (role == "member") != (member_id is not None):
        raise ValidationFailed.at("member_id", "member links (only) name a member")
    if partner_id is not None and session.get(Partner, partner_id) is None:
        raise NotFound(f"no partner {partner_id}")
    if member_id is not None and (
        not is_member_id(member_id) or session.get(Member, member_id) is None
    ):
        raise UnknownMember(f"no member {member_id!r}", member_id=member_id)
    if key_id is not None:
        key = session.get(ApiKey, key_id)
        if key is None or key.role != role or key.revoked_at is not None:
            raise ValidationFailed.at("key_id", f"an unrevoked {role} key")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    ttl = MEMBER_LINK_TTL if role == "member" else CONSOLE_LINK_TTL
    link = SignInLink(
        token_sha256=token_hash(token),
        role=role,
        partner_id=partner_id,
        member_id=member_id,
        created_at=now,
        expires_at=now + ttl,
        used_at=None,
        key_id=key_id,
    )
    session.add(link)
    session.flush()
    return NewLink(token, link.expires_at)


class LinkRefused(Exception):
    """The link does not sign in: ``reason`` is ``used``, ``expired`` or ``unknown``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_link(session: Session, token: str, now: datetime) -> SignInLink:
    """The link, while it may still be used (nothing is spent); else :class:`LinkRefused`."""
    link = session.get(SignInLink, token_hash(token))
    if link is None:
        raise LinkRefused("unknown")
    if link.used_at is not None:
        raise LinkRefused("used")
    if link.expires_at <= now:
        raise LinkRefused("expired")
    return link


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A session as opened: the cookie's token (given to the browser once) and its row."""

    token: str
    session: ConsoleSession


def redeem(session: Session, token: str, now: datetime) -> SignedIn:
    """Spend a link (one conditional update: a second use, even a concurrent one, finds it
    spent) and open its session; :class:`LinkRefused` when it is used, expired or unknown."""
    digest = token_hash(token)
    spent = session.execute(
        update(SignInLink)
        .where(
            SignInLink.token_sha256 == digest,
            SignInLink.used_at.is_(None),
            SignInLink.expires_at > now,
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        check_link(session, token, now)
        raise LinkRefused("used")  # spent between the update and the read
    link = session.scalars(
        select(SignInLink)
        .where(SignInLink.token_sha256 == digest)
        .execution_options(populate_existing=True)
    ).one()
    session_token = secrets.token_urlsafe(TOKEN_BYTES)
    opened = ConsoleSession(
        id=new_id("csn"),
        token_sha256=token_hash(session_token),
        role=link.role,
        partner_id=link.partner_id,
        member_id=link.member_id,
        created_at=now,
        last_seen_at=now,
        expires_at=now + MAX_SESSION,
        ended_at=None,
        key_id=link.key_id,
    )
    session.add(opened)
    session.flush()
    return SignedIn(session_token, opened)


def current(session: Session, token: str, now: datetime) -> ConsoleSession | None:
    """The open session of a cookie's token, its last use moved to ``now``; None when there is
    none, it was signed out, or it expired (idle for :data:`IDLE_TIMEOUT`, or past its end)."""
    found = session.scalars(
        select(ConsoleSession).where(ConsoleSession.token_sha256 == token_hash(token))
    ).one_or_none()
    if (
        found is None
        or found.ended_at is not None
        or found.expires_at <= now
        or found.last_seen_at + IDLE_TIMEOUT <= now
    ):
        return None
    if now - found.last_seen_at >= TOUCH_EVERY:
        found.last_seen_at = now
        session.flush()
    return found


def sign_out(session: Session, token: str, now: datetime) -> None:
    """End the session of a cookie's token (nothing happens for one that has ended)."""
    session.execute(
        update(ConsoleSession)
        .where(ConsoleSession.token_sha256 == token_hash(token), ConsoleSession.ended_at.is_(None))
        .values(ended_at=now)
        .execution_options(synchronize_session=False)
    )


def csrf_token(secret_key: bytes, binding: str) -> str:
    """The CSRF token of forms bound to ``binding`` (a session's token hash, or the sign-in
    page's nonce): HMAC-SHA256 under the service's secret key, hex."""
    return hmac.new(secret_key, b"console-csrf\0" + binding.encode(), hashlib.sha256).hexdigest()


def csrf_ok(secret_key: bytes, binding: str, given: str | None) -> bool:
    """``given`` is the CSRF token of ``binding`` (compared in constant time)."""
    return given is not None and hmac.compare_digest(csrf_token(secret_key, binding), given)


def purge(session: Session, now: datetime) -> int:
    """Delete links and sessions that can no longer be used (a day after their end)."""
    horizon = now - timedelta(days=1)
    links = session.execute(delete(SignInLink).where(SignInLink.expires_at < horizon))
    sessions = session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < horizon))
    return int(links.rowcount) + int(sessions.rowcount)  # type: ignore[attr-defined]
