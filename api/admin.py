"""The operator API under ``/v1/admin``: partners, rate cards, keys, bonuses, adjustments,
reports. Operator keys act here; finance keys may read the reports.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, patch
from litestar.params import QueryParameter, RawBody

from api.auth import admin, signed
from api.decoding import decode, parse_time
from api.docs import SIGNED, body, problems
from api.handlers import Call, Caller, operation, reader
from api.pages import Cursor, Limit, decode_cursor, page_out
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
    RateCardCreate,
    RateCardList,
)
from api.views import (
    key_created,
    key_out,
    liability_out,
    partner_out,
)
from coalition.db import transaction
from partners.keys import create_key, list_keys, revoke_key
from partners.queries import TransactionOut, list_partners, transaction_out
from partners.rates import (
    RateCardOut,
    create_partner,
    create_rate_card,
    get_partner,
    list_rate_cards,
    rate_card_out,
    update_partner,
)
from settlement.reports import liability

PathId = IdPath

#: The problems a write of the operator API may answer.
_WRITE_PROBLEMS = (400, 403, 404, 409, 413, 422)


def _new_key(
    call: Call[Any],
    data: PartnerKeyCreate | OperatorKeyCreate,
    *,
    role: str,
    partner_id: str | None,
    scopes: list[str],
) -> KeyCreated:
    """A key as both key routes create it (the secret in this response only)."""
    new = create_key(
        call.session,
        secret_key=call.services.settings.secret_key,
        role=role,
        partner_id=partner_id,
        alg=data.alg,
        scopes=scopes,
        public_key=data.public_key,
        expires_at=data.expires_at,
        now=call.services.clock(),
    )
    return key_created(new)


def _forget_key(call: Call[EmptyBody], key_id: str) -> None:
    """The revocation is committed: this process refuses the key from now on."""
    call.services.keys.forget(key_id)


class AdminController(Controller):
    """Operator keys (finance keys read reports)."""

    path = "/v1/admin"
    before_request = staticmethod(signed)
    security = SIGNED
    tags = ["operator"]  # noqa: RUF012

    # --- partners ------------------------------------------------------------------------

    @operation("/partners", opt=admin(), body=PartnerCreate, problems=(400, 403, 409, 413, 422))
    def create_partner(self, call: Call[PartnerCreate]) -> PartnerOut:
        """Onboard a partner (active); it needs a rate card before it can earn or burn."""
        data = call.data
        created = create_partner(
            call.session, name=data.name, currency=data.currency, now=call.services.clock()
        )
        return partner_out(created)

    @reader("/partners", opt=admin())
    def list_partners(
        self,
        caller: Caller,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> PartnerPage:
        """Partners, newest first (keyset pagination, like transactions)."""
        before_id = decode_cursor(cursor, "prt")
        page = caller.services.reads.run(
            lambda s: list_partners(s, before_id=before_id, limit=limit)
        )
        return page_out(PartnerPage, page, partner_out)

    @reader("/partners/{partner_id:str}", opt=admin(), problems=(403, 404, 422))
    def get_partner(self, caller: Caller, partner_id: PathId) -> PartnerOut:
        """One partner."""
        with transaction(caller.services.sessions) as s:
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

    @operation(
        "/partners/{partner_id:str}/rate-cards",
        opt=admin(),
        body=RateCardCreate,
    )
    def create_rate_card(self, call: Call[RateCardCreate], partner_id: PathId) -> RateCardOut:
        """A new rate-card version, in force from ``effective_from`` (default: now)."""
        data = call.data
        card = create_rate_card(
            call.session,
            partner_id,
            earn_points_per_unit=data.earn_points_per_unit,
            issue_price_per_point=data.issue_price_per_point,
            burn_value_per_point=data.burn_value_per_point,
            reimburse_price_per_point=data.reimburse_price_per_point,
            max_burn_share=data.max_burn_share,
            effective_from=data.effective_from,
            now=call.services.clock(),
        )
        return rate_card_out(card)

    @reader("/partners/{partner_id:str}/rate-cards", opt=admin(), problems=(403, 404, 422))
    def list_rate_cards(self, caller: Caller, partner_id: PathId) -> RateCardList:
        """Every version of the partner's rate card, newest first."""
        return caller.services.reads.run(
            lambda s: RateCardList(data=[rate_card_out(c) for c in list_rate_cards(s, partner_id)])
        )

    # --- keys ----------------------------------------------------------------------------

    @operation(
        "/partners/{partner_id:str}/keys",
        opt=admin(),
        body=PartnerKeyCreate,
    )
    def create_partner_key(self, call: Call[PartnerKeyCreate], partner_id: PathId) -> KeyCreated:
        """A partner key: ``hmac-sha256`` (the secret is in this response only) or
        ``ed25519`` (the partner's raw public key, base64url)."""
        data = call.data
        return _new_key(call, data, role="partner", partner_id=partner_id, scopes=list(data.scopes))

    @reader("/partners/{partner_id:str}/keys", opt=admin(), problems=(403, 404, 422))
    def list_partner_keys(self, caller: Caller, partner_id: PathId) -> KeyList:
        """The partner's keys, revoked and expired ones included; never a secret."""
        return caller.services.reads.run(
            lambda s: KeyList(data=[key_out(k) for k in list_keys(s, partner_id)])
        )

    @operation(
        "/keys/{key_id:str}/revoke",
        opt=admin(),
        body=EmptyBody,
        empty_as_object=True,
        status_code=200,
        after=_forget_key,
    )
    def revoke_key(self, call: Call[EmptyBody], key_id: PathId) -> KeyOut:
        """Revoke a key now; its signatures are refused from then on (``revoked-key``)."""
        return key_out(revoke_key(call.session, key_id, call.services.clock()))

    @operation(
        "/operator-keys", opt=admin(), body=OperatorKeyCreate, problems=(400, 403, 409, 413, 422)
    )
    def create_operator_key(self, call: Call[OperatorKeyCreate]) -> KeyCreated:
        """A key for the operator (acts on /v1/admin) or for finance (reads reports)."""
        data = call.data
        return _new_key(call, data, role=data.role, partner_id=None, scopes=[])

    # --- points --------------------------------------------------------------------------

    @operation("/bonuses", opt=admin(), body=BonusCreate)
    def bonus(self, call: Call[BonusCreate]) -> TransactionOut:
        """Points for an action, funded by a partner (billed at its issue price) or the
        coalition (``funded_by: "coalition"``)."""
        data = call.data
        posted = call.services.ops.bonus(
            member_id=data.member_id,
            points=data.points,
            reason=data.reason,
            funded_by=data.funded_by,
            session=call.session,
        )
        return transaction_out(posted.transaction)

    @operation("/adjustments", opt=admin(), body=AdjustmentCreate)
    def adjust(self, call: Call[AdjustmentCreate]) -> TransactionOut:
        """A correction of a member's balance with a reason (+ adds, - takes available)."""
        data = call.data
        posted = call.services.ops.adjust(
            member_id=data.member_id, points=data.points, reason=data.reason, session=call.session
        )
        return transaction_out(posted.transaction)

    # --- reports -------------------------------------------------------------------------

    @reader("/reports/liability", opt=admin("operator", "finance"))
    def liability_report(
        self,
        caller: Caller,
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
        as_of = parse_time(at, "at") or caller.services.clock()
        return caller.services.reads.run(lambda s: liability_out(liability(s, as_of)))
