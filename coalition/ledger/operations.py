"""The reversals, as movements of :func:`coalition.ledger.batch.post`, and their reads."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coalition.errors import invariant
from coalition.ledger.batch import post
from coalition.ledger.post import Credit, Debit, Header
from coalition.ledger.reads import Posted
from coalition.models import Lot, Transaction


def reverse_earn(
    session: Session,
    *,
    original: Transaction,
    header: Header,
    to_account: int,
    tier_window_days: int,
) -> Posted:
    """Take back the header's points of an earn (or bonus): its own lot first, then the others.

    When the member has already spent or holds those points, the reversal still happens: the
    member's available goes below zero and ``overdraft_points`` records by how much.
    """
    invariant(header.member_id == original.member_id, f"{header.id} reverses another's earn")
    own_lot = session.scalar(
        select(Lot.id).where(Lot.transaction_id == original.id, Lot.is_deficit.is_(False))
    )
    debit = Debit(
        header,
        to_account=to_account,
        overdraw=True,
        records_overdraft=True,
        first_lot_id=own_lot,
        tier_window_days=tier_window_days,
    )
    return post(session, [debit])[0]


def reverse_burn(
    session: Session,
    *,
    original: Transaction,
    header: Header,
    from_account: int,
    expires_at: datetime,
) -> Posted:
    """Give back the header's points of a burn to the lots it took them from, latest-expiring
    first.

    Points a capture took from the member's deficit (beyond its lots) come back as a new lot
    with no origin expiring at ``expires_at``; a deficit still open is then filled as after any
    credit. The deficit lot itself is never restored into: a later credit may have filled it.
    """
    invariant(header.member_id == original.member_id, f"{header.id} reverses another's burn")
    credit = Credit(
        header,
        from_account=from_account,
        origin_partner_id=None,
        expires_at=expires_at,
        restores=original.id,
    )
    return post(session, [credit])[0]


def reversed_points(session: Session, original_id: str) -> int:
    """Points already reversed of a transaction."""
    total = session.scalar(
        select(func.coalesce(func.sum(Transaction.points), 0)).where(
            Transaction.reverses == original_id
        )
    )
    return int(total or 0)


def lock_transaction(session: Session, txn_id: str) -> Transaction | None:
    """A transaction, row-locked so that its reversals are serialized."""
    txn = session.execute(
        select(Transaction).where(Transaction.id == txn_id).with_for_update()
    ).scalar_one_or_none()
    if txn is not None:
        session.expunge(txn)
    return txn
