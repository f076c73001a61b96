"""Read queries for the API: transaction and partner listings, and a transaction in the
contract's shape (:class:`TransactionOut`: the API's answer and the data of the
``transaction.*`` webhook events).

Listings page by :mod:`coalition.pages` (keyset pagination on the time-ordered id).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal, get_args

from msgspec import Struct
from sqlalchemy import select
from sqlalchemy.orm import Session

from coalition.errors import ValidationFailed, invariant
from coalition.ledger.kinds import KINDS
from coalition.models import TRANSACTION_KINDS, Transaction
from coalition.money import format_amount
from coalition.pages import MAX_PAGE, Page, newest_first
from coalition.shapes import row_as
from partners.models import Partner, RateCard

#: The kinds table's kinds (``coalition.ledger.kinds``), spelt out for the type checker, which
#: cannot read a Literal from a table; checked against the table when this module loads.
TransactionKind = Literal[
    "earn", "burn", "earn_reversal", "burn_reversal", "bonus", "adjustment", "expiry"
]
invariant(set(get_args(TransactionKind)) == set(KINDS), "API kinds != the kinds table")


class TransactionOut(Struct, omit_defaults=True):
    """A ledger transaction; ``reverses`` only on reversals."""

    id: str
    kind: TransactionKind
    partner_id: str | None
    member_id: str
    reference: str | None
    points: int
    amount: str | None
    currency: str | None
    rate_card_id: str | None
    occurred_at: datetime
    posted_at: datetime
    balance_after: int
    reverses: str | None = None


def transaction_out(txn: Transaction) -> TransactionOut:
    """A ledger transaction in the contract's shape: amounts as decimal strings in the
    currency's exponent (the API's answer and its webhook event's data). A function of its
    row alone (nothing that changes after it was posted), which is what lets a stored
    response be the transaction's id (api/idempotency.py)."""
    amount = None
    if txn.amount_minor is not None and txn.currency is not None:
        amount = format_amount(txn.amount_minor, txn.currency)
    return row_as(TransactionOut, txn, amount=amount)


def list_transactions(
    session: Session,
    *,
    partner_id: str | None,
    member_id: str | None = None,
    kind: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: str | None = None,
    limit: int = 100,
) -> Page[Transaction]:
    """Transactions newest first (by id), filtered; a partner (``partner_id``) sees only its own.

    ``since``/``until`` bound ``posted_at`` (``since <= posted_at < until``); ``before_id``
    continues a listing after the last id of the previous page.
    """
    if kind is not None and kind not in TRANSACTION_KINDS:
        raise ValidationFailed.at("kind", f"one of {', '.join(TRANSACTION_KINDS)}")
    if since is not None and until is not None and until <= since:
        raise ValidationFailed.at("until", "must be later than since")
    stmt = select(Transaction)
    if partner_id is not None:
        stmt = stmt.where(Transaction.partner_id == partner_id)
    if member_id is not None:
        stmt = stmt.where(Transaction.member_id == member_id)
    if kind is not None:
        stmt = stmt.where(Transaction.kind == kind)
    if since is not None:
        stmt = stmt.where(Transaction.posted_at >= since)
    if until is not None:
        stmt = stmt.where(Transaction.posted_at < until)
    return newest_first(
        session, stmt, Transaction.id, before_id=before_id, limit=limit, expunge=True
    )


def list_partners(
    session: Session, *, before_id: str | None = None, limit: int = 100
) -> Page[Partner]:
    """Partners newest first (by id)."""
    return newest_first(
        session, select(Partner), Partner.id, before_id=before_id, limit=limit, expunge=True
    )


def partner_names(session: Session, partner_ids: Iterable[str]) -> dict[str, str]:
    """The names of these partners, by id (unknown ids are left out)."""
    wanted = sorted(set(partner_ids))[:MAX_PAGE]
    if not wanted:
        return {}
    rows = session.execute(select(Partner.id, Partner.name).where(Partner.id.in_(wanted)))
    return {partner_id: name for partner_id, name in rows}


def active_rate_card(session: Session, partner_id: str, at: datetime) -> RateCard | None:
    """The partner's rate card in force at ``at``, or ``None`` when none is yet."""
    return session.scalars(
        select(RateCard)
        .where(RateCard.partner_id == partner_id, RateCard.effective_from <= at)
        .order_by(RateCard.effective_from.desc())
        .limit(1)
    ).first()
