"""Domain objects as response structs: the contract's field names and formats.

Amounts are decimal strings with the currency's exponent, rates are plain decimal strings,
times are UTC (msgspec writes them as RFC 3339 with ``Z``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import msgspec

from api.structs import (
    BalanceOut,
    Expiring,
    HoldOut,
    KeyCreated,
    KeyOut,
    LiabilityReport,
    PartnerOut,
    RateCardOut,
    TransactionOut,
)
from coalition.models import Hold, Transaction
from coalition.money import format_amount
from partners.keys import NewKey
from partners.models import ApiKey, Partner, RateCard
from partners.operations import Balance
from partners.rates import rate_card_data
from settlement.reports import Liability


def transaction_out(txn: Transaction) -> TransactionOut:
    """A ledger transaction in the contract's shape: a function of its row alone (nothing that
    changes after it was posted), which is what lets a stored response be the transaction's id
    (api/idempotency.py)."""
    amount = None
    if txn.amount_minor is not None and txn.currency is not None:
        amount = format_amount(txn.amount_minor, txn.currency)
    return TransactionOut(
        id=txn.id,
        kind=cast(Any, txn.kind),
        partner_id=txn.partner_id,
        member_id=txn.member_id,
        reference=txn.reference,
        points=txn.points,
        amount=amount,
        currency=txn.currency,
        rate_card_id=txn.rate_card_id,
        occurred_at=txn.occurred_at,
        posted_at=txn.posted_at,
        balance_after=txn.balance_after,
        reverses=txn.reverses,
    )


def hold_out(hold: Hold, now: datetime) -> HoldOut:
    """A hold; an active one past its expiry reads as ``expired`` (the job may lag)."""
    status = hold.status
    if status == "active" and hold.expires_at <= now:
        status = "expired"
    return HoldOut(
        id=hold.id,
        member_id=hold.member_id,
        points=hold.points,
        status=cast(Any, status),
        expires_at=hold.expires_at,
        reference=hold.reference,
    )


def balance_out(balance: Balance) -> BalanceOut:
    """A member's balance."""
    return BalanceOut(
        member_id=balance.member_id,
        available=balance.available,
        held=balance.held,
        tier=balance.tier,
        expiring=[Expiring(points=p, expires_at=at) for p, at in balance.expiring],
    )


def partner_out(partner: Partner) -> PartnerOut:
    """A partner."""
    return PartnerOut(
        id=partner.id,
        name=partner.name,
        currency=partner.currency,
        status=cast(Any, partner.status),
        created_at=partner.created_at,
    )


def rate_card_out(card: RateCard) -> RateCardOut:
    """A rate-card version, rates as decimal strings."""
    return msgspec.convert(rate_card_data(card), RateCardOut)


def _scopes(key: ApiKey) -> list[str]:
    return key.scopes.split() if key.scopes else []


def key_created(new: NewKey) -> KeyCreated:
    """A new key with its secret (hmac-sha256), shown this once."""
    key = new.key
    return KeyCreated(
        key_id=key.id,
        alg=cast(Any, key.alg),
        scopes=_scopes(key),
        role=cast(Any, key.role),
        partner_id=key.partner_id,
        expires_at=key.expires_at,
        secret=new.secret,
    )


def key_out(key: ApiKey) -> KeyOut:
    """A key as listed (never its secret)."""
    return KeyOut(
        key_id=key.id,
        alg=cast(Any, key.alg),
        scopes=_scopes(key),
        role=cast(Any, key.role),
        partner_id=key.partner_id,
        created_at=key.created_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        last_used_at=key.last_used_at,
    )


def liability_out(report: Liability) -> LiabilityReport:
    """The liability report."""
    return LiabilityReport(
        as_of=report.at,
        outstanding_points=report.outstanding_points,
        issued_points=report.flows.issued_points,
        earned_points=report.flows.earned_points,
        bonus_points=report.flows.bonus_points,
        earn_reversed_points=report.flows.earn_reversed_points,
        redeemed_points=report.flows.redeemed_points,
        burn_reversed_points=report.flows.burn_reversed_points,
        expired_points=report.flows.expired_points,
        adjusted_points=report.flows.adjusted_points,
    )
