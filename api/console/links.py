"""The API's sign-in links: ``POST /v1/console-links`` (a partner key, any scope: that
partner's view of the console), ``POST /v1/members/{member_id}/portal-links`` (scope ``read``:
the member's page as that partner may show it: balance, tier, expiring points and the partner's
own transactions with the member) and ``POST /v1/admin/members/{member_id}/portal-links`` (an
operator key: the member's page with the whole coalition history, for the operator to hand to
the member). All answer ``201 {"url", "expires_at"}`` with a single-use link
(:mod:`partners.signin`) at the configured public URL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from litestar import Controller, Request, Response, post
from litestar.params import RawBody
from msgspec import Struct
from sqlalchemy.orm import Session

from api.auth import admin, partner, partner_id_of, principal_of, signed
from api.docs import SIGNED, IdempotencyKey, body, problems
from api.idempotency import run_idempotent
from api.runtime import services_of
from api.structs import EmptyBody, MemberIdPath, decode
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


def _link(
    request: Request[Any, Any, Any],
    body: bytes,
    role: str,
    member_id: str | None,
    *,
    through_partner: bool,
) -> Response[LinkOut]:
    """A link minted by the caller: a partner key's links name its partner, the operator's
    member links name none (the member's whole history)."""
    services = services_of(request.app.state)
    principal = principal_of(request)
    partner_id = partner_id_of(principal) if through_partner else None

    def run(session: Session) -> tuple[int, LinkOut]:
        decode(body, EmptyBody, empty_as_object=True)
        link = issue_link(
            session, role=role, partner_id=partner_id, member_id=member_id, now=services.clock()
        )
        return 201, LinkOut(console_url(services.settings, link.token), link.expires_at)

    return run_idempotent(request, services, principal, body, run)


class SignInLinksController(Controller):
    """Links to the console (a partner's view) and to a member's page."""

    path = "/v1"
    before_request = staticmethod(signed)
    security = SIGNED
    tags = ["partner"]  # noqa: RUF012

    def _link(
        self,
        request: Request[Any, Any, Any],
        body: bytes,
        role: str,
        member_id: str | None = None,
    ) -> Response[LinkOut]:
        return _link(request, body, role, member_id, through_partner=True)

    @post(
        "/console-links",
        opt=partner(),
        dependencies=body(EmptyBody),
        responses=problems(400, 403, 409, 413, 422),
        sync_to_thread=True,
    )
    def console_link(
        self, request: Request[Any, Any, Any], body: RawBody, idempotency_key: IdempotencyKey
    ) -> Response[LinkOut]:
        """A single-use sign-in link (10 minutes) to this partner's view of the console."""
        return self._link(request, body, "partner")

    @post(
        "/members/{member_id:str}/portal-links",
        opt=partner("read"),
        dependencies=body(EmptyBody),
        responses=problems(400, 403, 404, 409, 413, 422),
        sync_to_thread=True,
    )
    def portal_link(
        self,
        request: Request[Any, Any, Any],
        member_id: MemberIdPath,
        body: RawBody,
        idempotency_key: IdempotencyKey,
    ) -> Response[LinkOut]:
        """A single-use link (15 minutes) to the member's page as this partner may show it:
        the balance, what expires when, the tier, and this partner's own transactions with the
        member (nothing of another partner's)."""
        return self._link(request, body, "member", member_id)


class AdminMemberLinksController(Controller):
    """The operator's link to a member's whole coalition history."""

    path = "/v1/admin"
    before_request = staticmethod(signed)
    security = SIGNED
    tags = ["operator"]  # noqa: RUF012

    @post(
        "/members/{member_id:str}/portal-links",
        opt=admin(),
        dependencies=body(EmptyBody),
        responses=problems(400, 403, 404, 409, 413, 422),
        sync_to_thread=True,
    )
    def member_link(
        self,
        request: Request[Any, Any, Any],
        member_id: MemberIdPath,
        body: RawBody,
        idempotency_key: IdempotencyKey,
    ) -> Response[LinkOut]:
        """A single-use link (15 minutes) to the member's page with the member's whole
        coalition history (every brand, by name): the operator hands it to the member through
        its own channel. No partner can mint one."""
        return _link(request, body, "member", member_id, through_partner=False)
