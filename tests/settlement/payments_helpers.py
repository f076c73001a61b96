"""Shared helpers of the payment tests: a closed period whose statements go every way (the
operator pays in EUR and JPY, a partner pays in EUR with and without a mandate), approved bank
details, and the bank's statement written with ``write_camt053``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from coalition.db import transaction
from settlement import workflow
from settlement.bankfiles import BankEntry, write_camt053
from settlement.models import Statement
from settlement.payments import bank_accounts
from tests.conftest import Db
from tests.settlement.helpers import close_at, ref

OPERATOR = {
    "operator_name": "Coalition Operator GmbH",
    "operator_iban": "DE89370400440532013000",
    "operator_bic": "COBADEFFXXX",
    "sepa_creditor_id": "DE98ZZZ09999999999",
}
FINANCE_A = workflow.Actor("key_finance_a", "finance")
FINANCE_B = workflow.Actor("key_finance_b", "finance")
IBANS = {
    "EUR": "FR1420041010050500013M02606",
    "JPY": "GB29NWBK60161331926819",
    "EUR2": "NL91ABNA0417164300",
    "EUR3": "BE68539007547034",
}


@dataclass
class World:
    """A closed, acknowledged period: ``paid_eur`` and ``paid_jpy`` the operator pays,
    ``debited`` a partner pays with a mandate, ``transfers`` a partner pays by its own
    transfer."""

    paid_eur: Statement
    paid_jpy: Statement
    debited: Statement
    transfers: Statement


def set_bank_account(db: Db, partner_id: str, iban: str, *, mandate: str | None = None) -> None:
    """Propose (finance A) and approve (finance B) bank details."""
    now = db.clock()
    with transaction(db.sessions) as s:
        checked = bank_accounts.check_details(
            holder="Partner Holder",
            iban=iban,
            bic=None,
            mandate_id=mandate,
            mandate_signed_on=date(2025, 1, 1) if mandate else None,
            today=now.date(),
        )
        bank_accounts.propose(s, partner_id, FINANCE_A, checked, now=now)
        bank_accounts.approve(s, partner_id, FINANCE_B, now=now)


def statement_of(db: Db, statement_id: str) -> Statement:
    with transaction(db.sessions) as s:
        found = s.get_one(Statement, statement_id)
        s.expunge(found)
        return found


def world(db: Db) -> World:
    """Four partners, a period of traffic, closed and acknowledged, bank details approved."""
    db.configure(**OPERATOR)
    paid_eur = db.partner("EUR", name="Paid EUR")
    paid_jpy = db.partner("JPY", earn="0.02", issue="1.6", burn="1.5", reimburse="1.25")
    debited = db.partner("EUR", name="Debited")
    transfers = db.partner("EUR", name="Transfers")
    member = db.member()
    db.ops.earn(debited.id, member_id=member, reference=ref(), amount="5000", currency="EUR")
    db.ops.earn(transfers.id, member_id=member, reference=ref(), amount="3000", currency="EUR")
    db.ops.burn(paid_eur.id, member_id=member, reference=ref(), points=2500)
    db.ops.burn(paid_jpy.id, member_id=member, reference=ref(), points=1001)
    db.clock.advance(hours=1)
    closed = close_at(db, db.clock())
    db.clock.advance(minutes=5)
    by_partner = {s.partner_id: s.id for s in closed.statements}
    with transaction(db.sessions) as s:
        for statement_id in by_partner.values():
            workflow.acknowledge(
                s,
                statement_id,
                workflow.Actor("key_partner", "partner"),
                secret_key=db.settings.secret_key,
                now=db.clock(),
            )
    set_bank_account(db, paid_eur.id, IBANS["EUR"])
    set_bank_account(db, paid_jpy.id, IBANS["JPY"])
    set_bank_account(db, debited.id, IBANS["EUR2"], mandate="MANDATE-0001")
    set_bank_account(db, transfers.id, IBANS["EUR3"])
    return World(
        statement_of(db, by_partner[paid_eur.id]),
        statement_of(db, by_partner[paid_jpy.id]),
        statement_of(db, by_partner[debited.id]),
        statement_of(db, by_partner[transfers.id]),
    )


def entry(
    statement: Statement,
    *,
    amount_minor: int | None = None,
    currency: str | None = None,
    credit: bool | None = None,
    end_to_end_id: str | None = "same",
    remittance: str = "",
    reference: str | None = None,
    booking: date | None = None,
    reversal: bool = False,
    return_reason: str | None = None,
) -> BankEntry:
    """The bank's entry of the payment of ``statement`` (changed where told)."""
    return BankEntry(
        line=0,
        account_iban=OPERATOR["operator_iban"],
        amount_minor=abs(statement.net_minor) if amount_minor is None else amount_minor,
        currency=currency or statement.currency,
        credit=(statement.net_minor < 0) if credit is None else credit,
        booking_date=booking or date(2026, 1, 5),
        end_to_end_id=statement.id if end_to_end_id == "same" else end_to_end_id,
        bank_reference=reference or f"BANKREF-{statement.id[-8:]}",
        remittance=remittance,
        reversal=reversal,
        return_reason=return_reason,
    )


def camt(entries: list[BankEntry], statement_id: str = "STMT-2026-001") -> bytes:
    """The bank's camt.053.001.08 of ``entries`` (one currency)."""
    return write_camt053(
        statement_id=statement_id,
        account_iban=OPERATOR["operator_iban"],
        entries=entries,
        created_at=datetime(2026, 1, 6, 8, 0),
    )
