"""The operator API under ``/v1/admin``: partners, rate cards, keys, bonuses, adjustments,
reports. Operator keys act here; finance keys may read the reports.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get, patch, post
from litestar.params import QueryParameter, RawBody
from sqlalchemy.orm import Session

from api.auth import admin, principal_of, signed
from api.docs import SIGNED, IdempotencyKey, body, problems
from api.idempotency import run_idempotent
from api.runtime import services_of
from api.structs import (
    LINE,
    AdjustmentCreate,
    BonusCreate,
    EmptyBody,
    IdPath,
    KeyCreated,
    KeyList,
    KeyOut,
    LiabilityReport,
    OperatorKeyCreate,
    PartnerCreate,
    PartnerKeyCreate,
    PartnerOut,
    PartnerPage,
    PartnerUpdate,
    QueryText,
    RateCardCreate,
    RateCardList,
    RateCardOut,
    TransactionOut,
    decode,
    parse_time,
)
from api.views import (
    decode_cursor,
    encode_cursor,
    key_created,
    key_out,
    liability_out,
    partner_out,
    rate_card_out,
    transaction_out,
)
from coalition.db import transaction
from partners.keys import create_key, list_keys, revoke_key
from partners.queries import list_partners
from partners.rates import (
    create_partner,
    create_rate_card,
    get_partner,
    list_rate_cards,
    update_partner,
)
from settlement.reports import liability

PathId = IdPath


class AdminController(Controller):
    """Operator keys (finance keys read reports)."""

    path = "/v1/admin"
    before_request = staticmethod(signed)
    security = SIGNED
    tags = ["operator"]  # noqa: RUF012

    # --- partners ------------------------------------------------------------------------

    @post(
        "/partners",
        opt=admin(),
        dependencies=body(PartnerCreate),
        responses=problems(400, 403, 409, 413, 422),
        sync_to_thread=True,
    )
    def create_partner(
        self, request: Request[Any, Any, Any], body: RawBody, idempotency_key: IdempotencyKey
    ) -> Response[PartnerOut]:
        """Onboard a partner (active); it needs a rate card before it can earn or burn."""
        services = services_of(request.app.state)

        def run(session: Session) -> tuple[int, PartnerOut]:
            data = decode(body, PartnerCreate)
            created = create_partner(
                session, name=data.name, currency=data.currency, now=services.clock()
            )
            return 201, partner_out(created)

        return run_idempotent(request, services, principal_of(request), body, run)

    @get("/partners", opt=admin(), responses=problems(403, 422), sync_to_thread=True)
    def list_partners(
        self,
        request: Request[Any, Any, Any],
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
        cursor: QueryText = None,
    ) -> PartnerPage:
        """Partners, newest first (keyset pagination, like transactions)."""
        before_id = decode_cursor(cursor, "prt")
        page = services_of(request.app.state).reads.run(
            lambda s: list_partners(s, before_id=before_id, limit=limit)
        )
        return PartnerPage(
            data=[partner_out(p) for p in page.rows],
            has_more=page.has_more,
            next_cursor=encode_cursor(page.last_id),
        )

    @get(
        "/partners/{partner_id:str}",
        opt=admin(),
        responses=problems(403, 404, 422),
        sync_to_thread=True,
    )
    def get_partner(self, request: Request[Any, Any, Any], partner_id: PathId) -> PartnerOut:
        """One partner."""
        services = services_of(request.app.state)
        with transaction(services.sessions) as s:
            return partner_out(get_partner(s, partner_id))

    @patch(
        "/partners/{partner_id:str}",
        opt=admin(),
        dependencies=body(PartnerUpdate),
        responses=problems(403, 404, 409, 413, 422),
        sync_to_thread=True,
    )
    def update_partner(
        self, request: Request[Any, Any, Any], partner_id: PathId, body: RawBody
    ) -> PartnerOut:
        """Rename, suspend or reactivate; the currency changes only before a rate card exists."""
        services = services_of(request.app.state)
        data = decode(body, PartnerUpdate)
        with transaction(services.sessions) as s:
            updated = update_partner(
                s, partner_id, name=data.name, currency=data.currency, status=data.status
            )
            return partner_out(updated)

    # --- rate cards ----------------------------------------------------------------------

    @post(
        "/partners/{partner_id:str}/rate-cards",
        opt=admin(),
        dependencies=body(RateCardCreate),
        responses=problems(400, 403, 404, 409, 413, 422),
        sync_to_thread=True,
    )
    def create_rate_card(
        self,
        request: Request[Any, Any, Any],
        partner_id: PathId,
        body: RawBody,
        idempotency_key: IdempotencyKey,
    ) -> Response[RateCardOut]:
        """A new rate-card version, in force from ``effective_from`` (default: now)."""
        services = services_of(request.app.state)

        def run(session: Session) -> tuple[int, RateCardOut]:
            data = decode(body, RateCardCreate)
            card = create_rate_card(
                session,
                partner_id,
                earn_points_per_unit=data.earn_points_per_unit,
                issue_price_per_point=data.issue_price_per_point,
                burn_value_per_point=data.burn_value_per_point,
                reimburse_price_per_point=data.reimburse_price_per_point,
                max_burn_share=data.max_burn_share,
                effective_from=data.effective_from,
                now=services.clock(),
            )
            return 201, rate_card_out(card)

        return run_idempotent(request, services, principal_of(request), body, run)

    @get(
        "/partners/{partner_id:str}/rate-cards",
        opt=admin(),
        responses=problems(403, 404, 422),
        sync_to_thread=True,
    )
    def list_rate_cards(self, request: Request[Any, Any, Any], partner_id: PathId) -> RateCardList:
        """Every version of the partner's rate card, newest first."""
        return services_of(request.app.state).reads.run(
            lambda s: RateCardList(data=[rate_card_out(c) for c in list_rate_cards(s, partner_id)])
        )

    # --- keys ----------------------------------------------------------------------------

    @post(
        "/partners/{partner_id:str}/keys",
        opt=admin(),
        dependencies=body(PartnerKeyCreate),
        responses=problems(400, 403, 404, 409, 413, 422),
        sync_to_thread=True,
    )
    def create_partner_key(
        self,
        request: Request[Any, Any, Any],
        partner_id: PathId,
        body: RawBody,
        idempotency_key: IdempotencyKey,
    ) -> Response[KeyCreated]:
        """A partner key: ``hmac-sha256`` (the secret is in this response only) or
        ``ed25519`` (the partner's raw public key, base64url)."""
        services = services_of(request.app.state)

        def run(session: Session) -> tuple[int, KeyCreated]:
            data = decode(body, PartnerKeyCreate)
            new = create_key(
                session,
                secret_key=services.settings.secret_key,
                role="partner",
                partner_id=partner_id,
                alg=data.alg,
                scopes=list(data.scopes),
                public_key=data.public_key,
                expires_at=data.expires_at,
                now=services.clock(),
            )
            return 201, key_created(new)

        return run_idempotent(request, services, principal_of(request), body, run)

    @get(
        "/partners/{partner_id:str}/keys",
        opt=admin(),
        responses=problems(403, 404, 422),
        sync_to_thread=True,
    )
    def list_partner_keys(self, request: Request[Any, Any, Any], partner_id: PathId) -> KeyList:
        """The partner's keys, revoked and expired ones included; never a secret."""
        return services_of(request.app.state).reads.run(
            lambda s: KeyList(data=[key_out(k) for k in list_keys(s, partner_id)])
        )

    @post(
        "/keys/{key_id:str}/revoke",
        opt=admin(),
        dependencies=body(EmptyBody),
        status_code=200,
        responses=problems(400, 403, 404, 409, 413, 422),
        sync_to_thread=True,
    )
    def revoke_key(
        self,
        request: Request[Any, Any, Any],
        key_id: PathId,
        body: RawBody,
        idempotency_key: IdempotencyKey,
    ) -> Response[KeyOut]:
        """Revoke a key now; its signatures are refused from then on (``revoked-key``)."""
        services = services_of(request.app.state)

        def run(session: Session) -> tuple[int, KeyOut]:
            decode(body, EmptyBody, empty_as_object=True)
            return 200, key_out(revoke_key(session, key_id, services.clock()))

        response = run_idempotent(request, services, principal_of(request), body, run)
        services.keys.forget(key_id)  # committed: this process refuses it from now on
        return response

    @post(
        "/operator-keys",
        opt=admin(),
        dependencies=body(OperatorKeyCreate),
        responses=problems(400, 403, 409, 413, 422),
        sync_to_thread=True,
    )
    def create_operator_key(
        self, request: Request[Any, Any, Any], body: RawBody, idempotency_key: IdempotencyKey
    ) -> Response[KeyCreated]:
        """A key for the operator (acts on /v1/admin) or for finance (reads reports)."""
        services = services_of(request.app.state)

        def run(session: Session) -> tuple[int, KeyCreated]:
            data = decode(body, OperatorKeyCreate)
            new = create_key(
                session,
                secret_key=services.settings.secret_key,
                role=data.role,
                partner_id=None,
                alg=data.alg,
                scopes=[],
                public_key=data.public_key,
                expires_at=data.expires_at,
                now=services.clock(),
            )
            return 201, key_created(new)

        return run_idempotent(request, services, principal_of(request), body, run)

    # --- points --------------------------------------------------------------------------

    @post(
        "/bonuses",
        opt=admin(),
        dependencies=body(BonusCreate),
        responses=problems(400, 403, 404, 409, 413, 422),
        sync_to_thread=True,
    )
    def bonus(
        self, request: Request[Any, Any, Any], body: RawBody, idempotency_key: IdempotencyKey
    ) -> Response[TransactionOut]:
        """Points for an action, funded by a partner (billed at its issue price) or the
        coalition (``funded_by: "coalition"``)."""
        services = services_of(request.app.state)

        def run(session: Session) -> tuple[int, TransactionOut]:
            data = decode(body, BonusCreate)
            posted = services.ops.bonus(
                member_id=data.member_id,
                points=data.points,
                reason=data.reason,
                funded_by=data.funded_by,
                session=session,
            )
            return 201, transaction_out(posted.transaction)

        return run_idempotent(request, services, principal_of(request), body, run)

    @post(
        "/adjustments",
        opt=admin(),
        dependencies=body(AdjustmentCreate),
        responses=problems(400, 403, 404, 409, 413, 422),
        sync_to_thread=True,
    )
    def adjust(
        self, request: Request[Any, Any, Any], body: RawBody, idempotency_key: IdempotencyKey
    ) -> Response[TransactionOut]:
        """A correction of a member's balance with a reason (+ adds, - takes available)."""
        services = services_of(request.app.state)

        def run(session: Session) -> tuple[int, TransactionOut]:
            data = decode(body, AdjustmentCreate)
            posted = services.ops.adjust(
                member_id=data.member_id, points=data.points, reason=data.reason, session=session
            )
            return 201, transaction_out(posted.transaction)

        return run_idempotent(request, services, principal_of(request), body, run)

    # --- reports -------------------------------------------------------------------------

    @get(
        "/reports/liability",
        opt=admin("operator", "finance"),
        responses=problems(403, 422),
        sync_to_thread=True,
    )
    def liability_report(
        self,
        request: Request[Any, Any, Any],
        at: Annotated[
            str | None,
            QueryParameter(
                max_length=64,
                pattern=LINE,
                description="As of this time (RFC 3339); default now.",
                schema_extra={"format": "date-time"},
            ),
        ] = None,
    ) -> LiabilityReport:
        """Outstanding points now (or ``at``) and issued, redeemed, expired totals."""
        services = services_of(request.app.state)
        as_of = parse_time(at, "at") or services.clock()
        return services.reads.run(lambda s: liability_out(liability(s, as_of)))
