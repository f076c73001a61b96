"""The member's own page: the balance, what expires when (exactly the ledger's lots, soonest
first: the balance endpoint's ``expiring``), the tier, and a history.

What the history holds depends on who minted the link (docs/security.md, "A member's page"):

- a link a partner minted (``POST /v1/members/{member_id}/portal-links``) shows what that
  partner's ``GET /v1/members/{id}/balance`` shows (balance, held points, tier, expiring points)
  and only that partner's own transactions with the member: no other brand's name, reference,
  amount, points or date, and no sum that holds them (the tier's qualifying points);
- a link the operator minted (``POST /v1/admin/members/{member_id}/portal-links``,
  ``coalition member-link``) shows the member's whole coalition history, where another
  partner shows as its name.

The session's partner decides it, in the query itself: every page of the history (the cursor
included) is read with the session's partner as its filter.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.response import Template
from sqlalchemy.orm import Session

from api.console.statements import Cursor
from api.console.web import page, read, roles, signed_in, viewer_of
from api.pages import decode_cursor, encode_cursor
from api.runtime import services_of
from coalition.errors import invariant
from coalition.models import Transaction
from coalition.pages import Page
from partners.queries import list_transactions, partner_names

HISTORY = 50


class MemberPage(Controller):
    """``/console/member``."""

    path = "/console"
    guards = [signed_in]  # noqa: RUF012 (Litestar's layer attribute)

    @get("/member", opt=roles("member"), sync_to_thread=True)
    def member(self, request: Request[Any, Any, Any], cursor: Cursor = None) -> Template:
        """What the member has, in plain words."""
        viewer = viewer_of(request)
        invariant(viewer.member_id is not None, "a member session names its member")
        member_id = str(viewer.member_id)
        # A partner's link: that partner's transactions only; the operator's: all of them.
        through = viewer.partner_id
        services = services_of(request.app.state)

        def member(s: Session) -> tuple[Any, Page[Transaction], dict[str, str]]:
            balance = services.ops.balance(member_id, session=s)
            found = list_transactions(
                s,
                partner_id=through,
                member_id=member_id,
                before_id=decode_cursor(cursor, "txn"),
                limit=HISTORY,
            )
            wanted = {t.partner_id for t in found.rows if t.partner_id}
            if through is not None:
                wanted.add(through)
            return balance, found, partner_names(s, wanted)

        balance, found, names = read(request, member)
        return page(
            "member.html",
            viewer,
            balance=balance,
            history=found.rows,
            next_cursor=encode_cursor(found.last_id),
            older=cursor is not None,
            names=names,
            through=names.get(through, "this partner") if through else None,
            window_days=services.settings.tier_window_days,
            now=services.clock(),
        )
