"""The API's sign-in links: ``POST /v1/console-links`` (a partner key, any scope: that
partner's view of the console), ``POST /v1/members/{member_id}/portal-links`` (scope ``read``:
the member's page as that partner may show it: balance, tier, expiring points and the partner's
own transactions with the member) and ``POST /v1/admin/members/{member_id}/portal-links`` (an
operator key: the member's page with the whole coalition history, for the operator to hand to
the member). All answer ``201 {"url", "expires_at"}`` with a single-use link
(:mod:`partners.signin`) at the configured public URL."""

from __future__ import annotations

from datetime import datetime

from litestar import Controller
from msgspec import Struct

from api.auth import admin, partner, signed
from api.docs import SIGNED
from api.handlers import Call, operation
from api.structs import EmptyBody, MemberIdPath
from coalition.config import Settings
from partners.signin import issue_link

SIGN_IN_PATH = "/console/sign-in/"


def console_url(settings: Settings, token: str) -> str:
    """The sign-in URL of a link's token, at the service's public URL."""
    return f"{settings.public_url}{SIGN_IN_PATH}{token}"


class LinkOut(Struct):
    """A single-use sign-in link and when it stops working."""

    url: str
    expires_at: datetime


def _link(call: Call[EmptyBody], role: str, member_id: str | None = None) -> LinkOut:
    """A link minted by the caller: a partner key's links name its partner, the operator's
    member links name none (the member's whole history)."""
    link = issue_link(
        call.session,
        role=role,
        partner_id=call.principal.partner_id,
        member_id=member_id,
        now=call.services.clock(),
    )
    return LinkOut(console_url(call.services.settings, link.token), link.expires_at)


class SignInLinksController(Controller):
    """Links to the console (a partner's view) and to a member's page."""

    path = "/v1"
    before_request = staticmethod(signed)
    security = SIGNED
    tags = ["partner"]  # noqa: RUF012

    @operation(
        "/console-links",
        opt=partner(),
        body=EmptyBody,
        empty_as_object=True,
        problems=(400, 403, 409, 413, 422),
    )
    def console_link(self, call: Call[EmptyBody]) -> LinkOut:
        """A single-use sign-in link (10 minutes) to this partner's view of the console."""
        return _link(call, "partner")

    @operation(
        "/members/{member_id:str}/portal-links",
        opt=partner("read"),
        body=EmptyBody,
        empty_as_object=True,
    )
    def portal_link(self, call: Call[EmptyBody], member_id: MemberIdPath) -> LinkOut:
        """A single-use link (15 minutes) to the member's page as this partner may show it:
        the balance, what expires when, the tier, and this partner's own transactions with the
        member (nothing of another partner's)."""
        return _link(call, "member", member_id)


class AdminMemberLinksController(Controller):
    """The operator's link to a member's whole coalition history."""

    path = "/v1/admin"
    before_request = staticmethod(signed)
    security = SIGNED
    tags = ["operator"]  # noqa: RUF012

    @operation(
        "/members/{member_id:str}/portal-links",
        opt=admin(),
        body=EmptyBody,
        empty_as_object=True,
    )
    def member_link(self, call: Call[EmptyBody], member_id: MemberIdPath) -> LinkOut:
        """A single-use link (15 minutes) to the member's page with the member's whole
        coalition history (every brand, by name): the operator hands it to the member through
        its own channel. No partner can mint one."""
        return _link(call, "member", member_id)
