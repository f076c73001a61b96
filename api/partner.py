"""The partner API under ``/v1``: members, earns, burns, holds, reversals, transactions.

Each handler maps HTTP to one :class:`~partners.operations.Operations` call or one query; the
rules live there. ``POST`` handlers run through :func:`~api.idempotency.run_idempotent`.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Controller
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter

from api.auth import (
    alone,
    any_key,
    partner,
    request_unit,
    require_scope,
    signed,
    single_use,
)
from api.decoding import parse_time
from api.docs import SIGNED
from api.handlers import Call, Caller, operation, reader
from api.pages import Cursor, Limit, decode_cursor, page_out
from api.structs import (
    LINE,
    BalanceOut,
    BurnCreate,
    CaptureCreate,
    EarnCreate,
    EmptyBody,
    HoldCreate,
    HoldOut,
    IdPath,
    Me,
    MemberCreate,
    MemberIdPath,
    MemberIdQuery,
    MemberOut,
    ReversalCreate,
    TransactionPage,
)
from api.views import (
    balance_out,
    hold_out,
    partner_out,
)
from partners.queries import (
    TransactionKind,
    TransactionOut,
    active_rate_card,
    list_transactions,
    transaction_out,
)
from partners.rates import get_partner, rate_card_out

PathId = IdPath
Since = Annotated[
    str | None,
    QueryParameter(
        max_length=64,
        pattern=LINE,
        description="Only transactions posted at or after this time (RFC 3339).",
        schema_extra={"format": "date-time"},
    ),
]
Until = Annotated[
    str | None,
    QueryParameter(
        max_length=64,
        pattern=LINE,
        description="Only transactions posted before this time (RFC 3339).",
        schema_extra={"format": "date-time"},
    ),
]


#: The problems a write of the partner API may answer.
_WRITE_PROBLEMS = (400, 403, 404, 409, 413, 422)


def _may_reverse(call: Call[ReversalCreate], txn_id: str) -> None:
    """A key with one of the scopes reverses only what that scope made: checked before the
    operation, so a ``403`` stores nothing under the Idempotency-Key."""
    principal = call.principal
    if not {"earn", "burn"} <= principal.scopes:
        original = call.services.ops.get_transaction(call.partner_id, txn_id)
        if original.kind in ("earn", "burn"):
            require_scope(principal, original.kind)


def _existing_member_doc() -> ResponseSpec:
    return ResponseSpec(data_container=MemberOut, description="The member exists already.")


class PartnerController(Controller):
    """Partner keys; each route names the scope it needs."""

    path = "/v1"
    before_request = staticmethod(signed)
    security = SIGNED
    tags = ["partner"]  # noqa: RUF012

    @reader("/me", opt=any_key(one_transaction=True), problems=(403,))
    def me(self, caller: Caller) -> Me:
        """Who is calling: the key, its scopes, its partner and that partner's rate card."""
        partner_view = card_view = None
        with request_unit(caller.request) as s:
            if caller.principal.partner_id is not None:
                found = get_partner(s, caller.principal.partner_id)
                card = active_rate_card(s, found.id, caller.services.clock())
                partner_view = partner_out(found)
                card_view = rate_card_out(card) if card is not None else None
        return Me(
            key_id=caller.principal.key_id,
            role=caller.principal.role,  # type: ignore[arg-type]
            scopes=sorted(caller.principal.scopes),
            partner=partner_view,
            rate_card=card_view,
        )

    @operation(
        "/members",
        opt=partner("earn"),
        body=MemberCreate,
        empty_as_object=True,
        problems=(400, 403, 409, 413, 422),
        responses={200: _existing_member_doc()},
    )
    def create_member(self, call: Call[MemberCreate]) -> MemberOut:
        """Create a member (``201``), optionally with its ``mem_`` id; an existing id is ``200``."""
        member_id, created = call.services.ops.create_member(
            call.data.member_id, session=call.session
        )
        call.status = 201 if created else 200
        return MemberOut(member_id=member_id)

    @reader(
        "/members/{member_id:str}/balance",
        opt=partner("read", one_transaction=True),
        problems=(403, 404, 422),
    )
    def balance(self, caller: Caller, member_id: MemberIdPath) -> BalanceOut:
        """A member's available and held points, tier and upcoming expiries."""
        # One statement on PostgreSQL: the request's nonce, the member's row and its expiries;
        # most often the whole of its transaction (one round trip, no session).
        if alone(caller.request):
            return balance_out(
                caller.services.ops.balance(
                    member_id, prelude=single_use(caller.request), alone=True
                )
            )
        with request_unit(caller.request, single_use_later=True) as s:
            return balance_out(
                caller.services.ops.balance(
                    member_id, session=s, prelude=single_use(caller.request)
                )
            )

    @operation("/earns", opt=partner("earn"), body=EarnCreate, led=True, posts="earn")
    def earn(self, call: Call[EarnCreate]) -> TransactionOut:
        """Points for a purchase: floor(amount x earn rate x tier multiplier)."""
        data = call.data
        posted = call.services.ops.earn(
            call.partner_id,
            member_id=data.member_id,
            reference=data.reference,
            amount=data.amount,
            currency=data.currency,
            occurred_at=data.occurred_at,
            session=call.session,
        )
        return transaction_out(posted.transaction)

    @operation("/burns", opt=partner("burn"), body=BurnCreate, led=True, posts="burn")
    def burn(self, call: Call[BurnCreate]) -> TransactionOut:
        """Points as payment, given ``points`` or ``amount`` + ``currency`` (rounded up)."""
        data = call.data
        posted = call.services.ops.burn(
            call.partner_id,
            member_id=data.member_id,
            reference=data.reference,
            points=data.points,
            amount=data.amount,
            currency=data.currency,
            basket_amount=data.basket_amount,
            session=call.session,
        )
        return transaction_out(posted.transaction)

    @operation("/holds", opt=partner("burn"), body=HoldCreate, led=True)
    def hold(self, call: Call[HoldCreate]) -> HoldOut:
        """Reserve points at checkout; capture or void later, or they expire."""
        data = call.data
        result = call.services.ops.hold(
            call.partner_id,
            member_id=data.member_id,
            reference=data.reference,
            points=data.points,
            expires_in=data.expires_in,
            session=call.session,
        )
        return hold_out(result.hold, call.services.clock())

    @reader(
        "/holds/{hold_id:str}", opt=partner("read", one_transaction=True), problems=(403, 404, 422)
    )
    def get_hold(self, caller: Caller, hold_id: PathId) -> HoldOut:
        """One of the partner's holds (another partner's is 404)."""
        with request_unit(caller.request) as s:
            found = caller.services.ops.get_hold(caller.partner_id, hold_id, session=s)
        return hold_out(found, caller.services.clock())

    @operation(
        "/holds/{hold_id:str}/capture",
        opt=partner("burn"),
        body=CaptureCreate,
        empty_as_object=True,
        status_code=200,
    )
    def capture(self, call: Call[CaptureCreate], hold_id: PathId) -> TransactionOut:
        """Burn the held points (or fewer: the rest is released); the burn transaction."""
        posted = call.services.ops.capture(
            call.partner_id, hold_id, points=call.data.points, session=call.session
        )
        return transaction_out(posted.transaction)

    @operation(
        "/holds/{hold_id:str}/void",
        opt=partner("burn"),
        body=EmptyBody,
        empty_as_object=True,
        status_code=200,
    )
    def void(self, call: Call[EmptyBody], hold_id: PathId) -> HoldOut:
        """Release an active hold's points."""
        result = call.services.ops.void(call.partner_id, hold_id, session=call.session)
        return hold_out(result.hold, call.services.clock())

    @operation(
        "/transactions/{txn_id:str}/reversals",
        opt=partner("earn", "burn"),
        body=ReversalCreate,
        before=_may_reverse,
    )
    def reverse(self, call: Call[ReversalCreate], txn_id: PathId) -> TransactionOut:
        """Reverse an earn (scope earn) or a burn (scope burn), fully or by ``points``."""
        posted = call.services.ops.reverse(
            call.partner_id,
            txn_id,
            reference=call.data.reference,
            points=call.data.points,
            session=call.session,
        )
        return transaction_out(posted.transaction)

    @reader(
        "/transactions/{txn_id:str}",
        opt=partner("read", one_transaction=True),
        problems=(403, 404, 422),
    )
    def get_transaction(self, caller: Caller, txn_id: PathId) -> TransactionOut:
        """One of the partner's transactions (another partner's is 404)."""
        with request_unit(caller.request) as s:
            found = caller.services.ops.get_transaction(caller.partner_id, txn_id, session=s)
        return transaction_out(found)

    @reader("/transactions", opt=partner("read", one_transaction=True))
    def list_transactions(  # noqa: PLR0917 (query parameters)
        self,
        caller: Caller,
        member_id: MemberIdQuery = None,
        kind: Annotated[TransactionKind | None, QueryParameter()] = None,
        since: Since = None,
        until: Until = None,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> TransactionPage:
        """The partner's transactions, newest first, ``limit`` per page (keyset pagination)."""
        with request_unit(caller.request) as s:
            page = list_transactions(
                s,
                partner_id=caller.partner_id,
                member_id=member_id,
                kind=kind,
                since=parse_time(since, "since"),
                until=parse_time(until, "until"),
                before_id=decode_cursor(cursor, "txn"),
                limit=limit,
            )
        return page_out(TransactionPage, page, transaction_out)
