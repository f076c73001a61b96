"""Partners' bank details, changed under four eyes.

A change is proposed by one finance key (``PUT /v1/admin/partners/{id}/bank-account``) and is
``pending`` until a **second** finance key approves it; only then does it become ``active``
(the previous active details are ``retired``). A newer proposal ``replaces`` a pending one.
The person is the key: a console session counts as the finance key it was signed in for
(``coalition console-link --role finance --key KEY``), and a session tied to no key may not
propose or approve at all, so neither another key's console session nor a second browser of the
same person gets around the rule. Held by:

- the code: the approver's key must differ from the proposer's (``403 four-eyes``);
- the schema: ``approved_by <> proposed_by`` (a check constraint), one ``active`` and one
  ``pending`` row per partner (partial unique indexes);
- a row lock: an approval locks the pending row first (``SELECT ... FOR UPDATE``), so of two
  approvals racing, the second finds it active already (``409 conflict``).

IBANs are checked by ``schwifty`` (the checksum and the country's length and format), BICs by
their ISO 9362 format; each change is audited (``GET /v1/admin/audit`` records the request) and
announced to the partner as ``partner.bank_account_changed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal, cast

from msgspec import Struct
from schwifty import BIC, IBAN
from schwifty.exceptions import SchwiftyException
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from coalition import text
from coalition.errors import Conflict, Forbidden, FourEyes, NotFound, ValidationFailed
from coalition.ids import new_id
from coalition.shapes import row_as
from partners.models import Partner
from partners.webhooks import outbox
from partners.webhooks.events import EventType
from settlement.payments.models import PartnerBankAccount
from settlement.workflow import Actor

#: The SEPA character set for names (Latin letters, digits and a few signs) is wider in
#: practice; the holder is one printable line of at most 70 characters (pain's ``Max70Text``).
HOLDER_MAX = 70
MANDATE_MAX = 35


def four_eyes_person(actor: Actor) -> str:
    """The key a four-eyes rule counts ``actor`` as; a finance key only."""
    if actor.role != "finance":
        raise Forbidden("bank details are changed and approved by finance keys only")
    person = actor.person
    if person is None:
        raise FourEyes(
            "this console session is not signed in for a finance key, so four eyes cannot be "
            "told apart; sign in with `coalition console-link --role finance --key KEY_ID`"
        )
    return person


@dataclass(frozen=True, slots=True)
class NewDetails:
    """Bank details as proposed (checked by :func:`check_details`)."""

    holder: str
    iban: str
    bic: str | None
    mandate_id: str | None
    mandate_signed_on: date | None


def check_details(
    *,
    holder: str,
    iban: str,
    bic: str | None,
    mandate_id: str | None,
    mandate_signed_on: date | None,
    today: date,
) -> NewDetails:
    """The details normalised (IBAN and BIC compact, upper case), or ValidationFailed naming
    the field."""
    errors: list[dict[str, str]] = []
    try:
        holder = text.clean(holder, "holder", max_length=HOLDER_MAX)
    except ValidationFailed as exc:
        errors.extend(exc.errors)
    checked_iban = ""
    try:
        checked_iban = IBAN(iban).compact
    except SchwiftyException as exc:
        errors.append({"path": "iban", "message": f"not a valid IBAN: {exc}"})
    checked_bic = None
    if bic is not None:
        try:
            checked_bic = str(BIC(bic))
        except SchwiftyException as exc:
            errors.append({"path": "bic", "message": f"not a valid BIC: {exc}"})
    if (mandate_id is None) != (mandate_signed_on is None):
        errors.append(
            {
                "path": "mandate_id",
                "message": "a mandate needs both mandate_id and mandate_signed_on",
            }
        )
    if mandate_id is not None and (
        not 1 <= len(mandate_id) <= MANDATE_MAX
        or not all(c.isascii() and (c.isalnum() or c in "+?/-:().,' ") for c in mandate_id)
    ):
        errors.append(
            {
                "path": "mandate_id",
                "message": "1 to 35 of the SEPA characters (A-Z a-z 0-9 +?/-:().,' )",
            }
        )
    if mandate_signed_on is not None and mandate_signed_on > today:
        errors.append({"path": "mandate_signed_on", "message": "may not be in the future"})
    if errors:
        raise ValidationFailed(errors)
    return NewDetails(holder, checked_iban, checked_bic, mandate_id, mandate_signed_on)


def _partner(session: Session, partner_id: str) -> Partner:
    partner = session.get(Partner, partner_id)
    if partner is None:
        raise NotFound(f"no partner {partner_id}")
    return partner


def active_account(session: Session, partner_id: str) -> PartnerBankAccount | None:
    """The partner's bank details in force, if any."""
    return session.scalars(
        select(PartnerBankAccount).where(
            PartnerBankAccount.partner_id == partner_id, PartnerBankAccount.status == "active"
        )
    ).one_or_none()


def pending_account(session: Session, partner_id: str) -> PartnerBankAccount | None:
    """The partner's change waiting for a second finance key, if any."""
    return session.scalars(
        select(PartnerBankAccount).where(
            PartnerBankAccount.partner_id == partner_id, PartnerBankAccount.status == "pending"
        )
    ).one_or_none()


@dataclass(frozen=True, slots=True)
class BankDetails:
    """A partner's active and pending details."""

    partner_id: str
    active: PartnerBankAccount | None
    pending: PartnerBankAccount | None


def details(session: Session, partner_id: str) -> BankDetails:
    """What ``GET /v1/admin/partners/{id}/bank-account`` shows."""
    _partner(session, partner_id)
    return BankDetails(
        partner_id, active_account(session, partner_id), pending_account(session, partner_id)
    )


def pending_changes(session: Session) -> list[PartnerBankAccount]:
    """Every pending change, oldest first (the console shows them loudly)."""
    return list(
        session.scalars(
            select(PartnerBankAccount)
            .where(PartnerBankAccount.status == "pending")
            .order_by(PartnerBankAccount.id)
        )
    )


def masked_iban(iban: str) -> str:
    """An IBAN as a partner's event shows it: the country, check digits and last four."""
    return f"{iban[:4]}{'*' * max(len(iban) - 8, 0)}{iban[-4:]}"


class BankAccountVersion(Struct):
    """One version of a partner's bank details."""

    id: str
    status: Literal["pending", "active", "retired", "replaced"]
    holder: str
    iban: str
    bic: str | None
    mandate_id: str | None
    mandate_signed_on: date | None
    proposed_by: str
    proposed_at: datetime
    approved_by: str | None
    approved_at: datetime | None


class BankAccountOut(Struct):
    """A partner's bank details: ``status`` of the answer (``pending`` after a change,
    ``active`` after an approval), the active and the pending version."""

    partner_id: str
    status: Literal["pending", "active", "none"]
    active: BankAccountVersion | None
    pending: BankAccountVersion | None


class BankAccountChanged(Struct):
    """The data of ``partner.bank_account_changed``: the IBAN masked, whether a mandate is
    held (not its reference)."""

    partner_id: str
    bank_account_id: str
    status: str
    holder: str
    iban: str
    bic: str | None
    mandate: bool
    changed_at: datetime


def account_out(account: PartnerBankAccount) -> BankAccountVersion:
    """One version of the details in the API's shape."""
    return row_as(BankAccountVersion, account)


def details_out(found: BankDetails, status: str) -> BankAccountOut:
    """A partner's details with the answer's ``status``."""
    return BankAccountOut(
        partner_id=found.partner_id,
        status=cast(Any, status),
        active=None if found.active is None else account_out(found.active),
        pending=None if found.pending is None else account_out(found.pending),
    )


def _announce(session: Session, account: PartnerBankAccount, now: datetime) -> None:
    """``partner.bank_account_changed``: the partner learns of every proposal and approval (a
    change it did not ask for is how the fraud shows), with the IBAN masked."""
    outbox.note(
        session,
        EventType.PARTNER_BANK_ACCOUNT_CHANGED,
        account.partner_id,
        row_as(
            BankAccountChanged,
            account,
            bank_account_id=account.id,
            iban=masked_iban(account.iban),
            mandate=account.mandate_id is not None,
            changed_at=now,
        ),
        at=now,
    )


def propose(
    session: Session, partner_id: str, actor: Actor, details_: NewDetails, *, now: datetime
) -> PartnerBankAccount:
    """A finance key proposes new details: ``pending`` (an earlier pending change is
    ``replaced``) until another finance key approves."""
    person = four_eyes_person(actor)
    _partner(session, partner_id)
    session.execute(
        update(PartnerBankAccount)
        .where(PartnerBankAccount.partner_id == partner_id, PartnerBankAccount.status == "pending")
        .values(status="replaced", ended_at=now)
        .execution_options(synchronize_session=False)
    )
    account = PartnerBankAccount(
        id=new_id("bac"),
        partner_id=partner_id,
        holder=details_.holder,
        iban=details_.iban,
        bic=details_.bic,
        mandate_id=details_.mandate_id,
        mandate_signed_on=details_.mandate_signed_on,
        status="pending",
        proposed_by=person,
        proposed_via=actor.key_id or person,
        proposed_at=now,
    )
    session.add(account)
    session.flush()
    _announce(session, account, now)
    return account


def approve(
    session: Session, partner_id: str, actor: Actor, *, now: datetime
) -> PartnerBankAccount:
    """A second finance key approves the pending change: it becomes ``active`` and the
    previous details ``retired``. The proposer's key is ``four-eyes``; a change approved in
    the meantime is ``409 conflict``."""
    person = four_eyes_person(actor)
    _partner(session, partner_id)
    pending = session.scalars(
        select(PartnerBankAccount)
        .where(PartnerBankAccount.partner_id == partner_id, PartnerBankAccount.status == "pending")
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if pending is None:
        raise Conflict(f"partner {partner_id} has no bank details waiting for approval")
    if pending.proposed_by == person:
        raise FourEyes(
            f"key {person} proposed this change ({pending.id}); another finance key must approve it"
        )
    session.execute(
        update(PartnerBankAccount)
        .where(PartnerBankAccount.partner_id == partner_id, PartnerBankAccount.status == "active")
        .values(status="retired", ended_at=now)
        .execution_options(synchronize_session=False)
    )
    done = session.execute(
        update(PartnerBankAccount)
        .where(PartnerBankAccount.id == pending.id, PartnerBankAccount.status == "pending")
        .values(status="active", approved_by=person, approved_via=actor.key_id, approved_at=now)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(f"bank details {pending.id} were approved or replaced meanwhile")
    session.refresh(pending)
    _announce(session, pending, now)
    return pending
