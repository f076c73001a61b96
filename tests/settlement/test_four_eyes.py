"""Partners' bank details under four eyes: a change is pending until a second finance key
approves it; the proposing key cannot approve it, neither directly nor through a console
session signed in for it (and a session tied to no key cannot approve at all); of two
approvals racing, exactly one wins; IBAN and BIC are checked; the partner is told."""

from __future__ import annotations

import threading
from datetime import date
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from coalition.db import transaction
from coalition.errors import Conflict, Forbidden, FourEyes, ValidationFailed
from partners.webhooks.endpoints import Webhooks
from partners.webhooks.tables import WebhookEvent
from settlement.payments import bank_accounts
from settlement.payments.models import PartnerBankAccount
from settlement.workflow import Actor
from tests.conftest import Db

A = Actor("key_finance_a", "finance")
B = Actor("key_finance_b", "finance")


def _details(iban: str = "DE89 3704 0044 0532 0130 00", **changes: Any) -> bank_accounts.NewDetails:
    fields: dict[str, Any] = {
        "holder": "Fresh & Co. GmbH",
        "iban": iban,
        "bic": "COBADEFFXXX",
        "mandate_id": None,
        "mandate_signed_on": None,
        "today": date(2026, 1, 5),
    }
    fields.update(changes)
    return bank_accounts.check_details(**fields)


def _propose(db: Db, partner_id: str, actor: Actor = A) -> PartnerBankAccount:
    with transaction(db.sessions) as s:
        return bank_accounts.propose(s, partner_id, actor, _details(), now=db.clock())


def _approve(db: Db, partner_id: str, actor: Actor) -> PartnerBankAccount:
    with transaction(db.sessions) as s:
        return bank_accounts.approve(s, partner_id, actor, now=db.clock())


def test_a_change_is_pending_until_another_finance_key_approves_it(db: Db) -> None:
    partner = db.partner()
    proposed = _propose(db, partner.id)
    assert proposed.status == "pending" and proposed.iban == "DE89370400440532013000"
    with transaction(db.sessions) as s:
        shown = bank_accounts.details(s, partner.id)
        assert shown.active is None and shown.pending is not None
    approved = _approve(db, partner.id, B)
    assert approved.status == "active" and approved.approved_by == B.key_id
    # a second change: the first stays active until the second is approved
    _propose(db, partner.id, B)
    with transaction(db.sessions) as s:
        shown = bank_accounts.details(s, partner.id)
        assert shown.active is not None and shown.active.id == approved.id
    _approve(db, partner.id, A)
    with transaction(db.sessions) as s:
        statuses = s.scalars(
            select(PartnerBankAccount.status).order_by(PartnerBankAccount.id)
        ).all()
    assert statuses == ["retired", "active"]


def test_the_proposing_key_cannot_approve_its_own_change(db: Db) -> None:
    partner = db.partner()
    _propose(db, partner.id)
    with pytest.raises(FourEyes):
        _approve(db, partner.id, A)
    with transaction(db.sessions) as s:
        assert bank_accounts.details(s, partner.id).active is None


def test_a_console_session_of_the_proposing_key_cannot_approve(db: Db) -> None:
    partner = db.partner()
    _propose(db, partner.id)
    same_person = Actor("csn_session_of_a", "finance", on_behalf_of=A.key_id, via_console=True)
    with pytest.raises(FourEyes):
        _approve(db, partner.id, same_person)
    nobody = Actor("csn_untied", "finance", via_console=True)
    with pytest.raises(FourEyes, match="--key"):
        _approve(db, partner.id, nobody)
    other = Actor("csn_session_of_b", "finance", on_behalf_of=B.key_id, via_console=True)
    assert _approve(db, partner.id, other).approved_by == B.key_id


def test_only_finance_keys_change_bank_details(db: Db) -> None:
    partner = db.partner()
    with pytest.raises(Forbidden):
        _propose(db, partner.id, Actor("key_operator", "operator"))


def test_the_schema_refuses_an_approval_by_the_proposer(db: Db) -> None:
    partner = db.partner()
    proposed = _propose(db, partner.id)
    with pytest.raises(IntegrityError), transaction(db.sessions) as s:
        s.execute(
            text(
                "UPDATE partner_bank_accounts SET status = 'active', approved_by = proposed_by,"
                " approved_at = proposed_at WHERE id = :id"
            ),
            {"id": proposed.id},
        )


@pytest.mark.postgres
def test_two_approvals_racing_approve_once(pg: Db) -> None:
    partner = pg.partner()
    _propose(pg, partner.id)
    approvers = [Actor(f"key_finance_{n}", "finance") for n in range(6)]
    barrier = threading.Barrier(len(approvers))
    outcomes: list[str] = []

    def approve(actor: Actor) -> None:
        barrier.wait()
        try:
            _approve(pg, partner.id, actor)
            outcomes.append("approved")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=approve, args=(a,)) for a in approvers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["approved"] + ["conflict"] * (len(approvers) - 1)
    with transaction(pg.sessions) as s:
        rows = s.scalars(select(PartnerBankAccount)).all()
    assert [r.status for r in rows] == ["active"]


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("iban", {"iban": "DE89370400440532013001"}),  # checksum
        ("iban", {"iban": "DE8937040044053201300"}),  # length
        ("bic", {"bic": "COBADEFF9"}),
        ("holder", {"holder": " "}),
        ("holder", {"holder": "Fresh \u202eHmbG .oC"}),  # a bidi override: the one text rule
        ("holder", {"holder": "Fresh\x85Co"}),  # a C1 control character
        ("mandate_id", {"mandate_id": "M-1"}),  # without its date
        ("mandate_signed_on", {"mandate_id": "M-1", "mandate_signed_on": date(2027, 1, 1)}),
    ],
)
def test_bad_details_are_refused_naming_the_field(field: str, changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationFailed) as caught:
        _details(**changes)
    assert caught.value.errors[0]["path"] == field


def test_the_partner_is_told_of_every_change_with_the_iban_masked(db: Db) -> None:
    partner = db.partner()
    hooks = Webhooks(
        db.settings.secret_key, allow_private=True, resolver=lambda h, p: ["127.0.0.1"]
    )
    with transaction(db.sessions) as s:
        hooks.create(
            s,
            partner.id,
            url="http://127.0.0.1:9/hook",
            events=["partner.bank_account_changed"],
            description=None,
            now=db.clock(),
        )
    _propose(db, partner.id)
    _approve(db, partner.id, B)
    with transaction(db.sessions) as s:
        payloads = s.scalars(
            select(func.coalesce(WebhookEvent.payload, ""))
            .where(WebhookEvent.type == "partner.bank_account_changed")
            .order_by(WebhookEvent.id)
        ).all()
    assert len(payloads) == 2
    assert '"status":"pending"' in payloads[0] and '"status":"active"' in payloads[1]
    assert "DE89**************3000" in payloads[0] and "0532013000" not in payloads[0]
