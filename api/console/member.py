"""The member's own page (opened by ``POST /v1/members/{member_id}/portal-links``): the balance,
what expires when (exactly the ledger's lots, soonest first: the balance endpoint's
``expiring``), the tier and what the next one needs, and the history across brands, where
another partner shows as its name and nothing else (no references, no amounts)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.response import Template
from sqlalchemy.orm import Session

from api.console.web import page, read, roles, signed_in, viewer_of
from api.runtime import services_of
from partners.queries import list_transactions, partner_names

HISTORY = 50


class MemberPage(Controller):
    """``/console/member``."""

    path = "/console"
    guards = [signed_in]  # noqa: RUF012 (Litestar's layer attribute)

    @get("/member", opt=roles("member"), sync_to_thread=True)
    def member(self, request: Request[Any, Any, Any]) -> Template:
        """What the member has, in plain words."""
        viewer = viewer_of(request)
        assert viewer.member_id is not None
        services = services_of(request.app.state)
        member_id = viewer.member_id

        def member(s: Session) -> tuple[Any, list[Any], dict[str, str]]:
            balance = services.ops.balance(member_id, session=s)
            history = list_transactions(s, partner_id=None, member_id=member_id, limit=HISTORY).rows
            return (
                balance,
                history,
                partner_names(s, {t.partner_id for t in history if t.partner_id}),
            )

        balance, history, names = read(request, member)
        return page(
            "member.html",
            viewer,
            balance=balance,
            history=history,
            names=names,
            window_days=services.settings.tier_window_days,
            now=services.clock(),
        )
