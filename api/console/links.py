"""The API's sign-in links: ``POST /v1/console-links`` (a partner key, any scope: that
partner's view of the console) and ``POST /v1/members/{member_id}/portal-links`` (scope
``read``: the member's own page). Both answer ``201 {"url", "expires_at"}`` with a single-use
link (:mod:`partners.signin`) at the configured public URL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from litestar import Controller, Request, Response, post
from litestar.params import RawBody
from msgspec import Struct
from sqlalchemy.orm import Session

from api.auth import partner, partner_id_of, principal_of, signed
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
        services = services_of(request.app.state)
        principal = principal_of(request)

        def run(session: Session) -> tuple[int, LinkOut]:
            decode(body, EmptyBody, empty_as_object=True)
            link = issue_link(
                session,
                role=role,
                partner_id=partner_id_of(principal),
                member_id=member_id,
                now=services.clock(),
            )
            return 201, LinkOut(console_url(services.settings, link.token), link.expires_at)

        return run_idempotent(request, services, principal, body, run)

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
        """A single-use link (15 minutes) to the member's own page: balance, what expires
        when, tier, history across brands."""
        return self._link(request, body, "member", member_id)
