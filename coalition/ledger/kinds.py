"""The kinds table: what each kind of transfer means, declared once.

Every transfer moves a positive number of points from the account it debits to the account it
credits. A kind fixes the roles of those two accounts (the member's, a partner's ``issued`` or
``redeemed`` account, an operator account), whether a statement bills it and at which price of
the rate card, which statement total it adds to and with which sign in the net, and which flow
of the points report (issued, redeemed, expired...) it is. The statements' SQL, ``coalition
check``, the reports, the metrics, the demo and the API's kind types read this table; nothing
else restates what a kind is.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from coalition.models import OPERATOR_ACCOUNTS, AccountKind, TransactionKind

Role = AccountKind
#: Which rate-card price a billed kind is priced at.
Price = Literal["issue", "reimburse"]


class Flow(StrEnum):
    """The points report's flows (``settlement.reports.Flows``), one per kind."""

    EARNED = "earned"
    BONUS = "bonus"
    EARN_REVERSED = "earn_reversed"
    REDEEMED = "redeemed"
    BURN_REVERSED = "burn_reversed"
    EXPIRED = "expired"
    ADJUSTED = "adjusted"


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of transfer.

    ``debit`` and ``credit``: the roles of the accounts it debits and credits. ``unfunded``:
    the role that stands in for a partner's account when the transfer has no partner (a bonus
    the coalition funds). ``either_way``: the kind moves points in either direction between
    its two roles (an adjustment: the member credited or debited). ``price``: billed on the
    partner's statement at that rate-card price (``None``: never billed). ``points_total`` and
    ``amount_total``: the statement totals its lines add their points and amounts to;
    ``net_sign``: the sign its amount counts with in what the operator pays the partner.
    ``issued`` / ``redeemed``: counted as points issued or redeemed (metrics, the demo).
    ``tier_sign``: the sign its points count with in the member's tier basis.
    """

    kind: TransactionKind
    debit: Role
    credit: Role
    flow: Flow
    unfunded: Role | None = None
    either_way: bool = False
    price: Price | None = None
    points_total: str | None = None
    amount_total: str | None = None
    net_sign: int = 0
    issued: bool = False
    redeemed: bool = False
    tier_sign: int = 0

    @property
    def member_credited(self) -> bool:
        """The member's account is the one credited (in the kind's declared direction)."""
        return self.credit is Role.MEMBER

    @property
    def liability_sign(self) -> int:
        """How the kind moves the members' points, the operator's liability (declared
        direction; an adjustment's actual direction is in its accounts)."""
        return 1 if self.member_credited else -1


K = TransactionKind
KINDS: dict[str, Kind] = {
    k.kind.value: k
    for k in (
        Kind(
            K.EARN,
            debit=Role.PARTNER_ISSUED,
            credit=Role.MEMBER,
            flow=Flow.EARNED,
            price="issue",
            points_total="issued_points",
            amount_total="issued_minor",
            net_sign=-1,
            issued=True,
            tier_sign=1,
        ),
        Kind(
            K.BONUS,
            debit=Role.PARTNER_ISSUED,
            credit=Role.MEMBER,
            flow=Flow.BONUS,
            unfunded=Role.OPERATOR_BONUS,
            price="issue",
            points_total="issued_points",
            amount_total="issued_minor",
            net_sign=-1,
            issued=True,
        ),
        Kind(
            K.EARN_REVERSAL,
            debit=Role.MEMBER,
            credit=Role.PARTNER_ISSUED,
            flow=Flow.EARN_REVERSED,
            price="issue",
            amount_total="earn_reversed_minor",
            net_sign=1,
            tier_sign=-1,
        ),
        Kind(
            K.BURN,
            debit=Role.MEMBER,
            credit=Role.PARTNER_REDEEMED,
            flow=Flow.REDEEMED,
            price="reimburse",
            points_total="redeemed_points",
            amount_total="reimbursed_minor",
            net_sign=1,
            redeemed=True,
        ),
        Kind(
            K.BURN_REVERSAL,
            debit=Role.PARTNER_REDEEMED,
            credit=Role.MEMBER,
            flow=Flow.BURN_REVERSED,
            price="reimburse",
            amount_total="burn_reversed_minor",
            net_sign=-1,
        ),
        Kind(
            K.ADJUSTMENT,
            debit=Role.OPERATOR_ADJUSTMENT,
            credit=Role.MEMBER,
            flow=Flow.ADJUSTED,
            either_way=True,
        ),
        Kind(K.EXPIRY, debit=Role.MEMBER, credit=Role.OPERATOR_BREAKAGE, flow=Flow.EXPIRED),
    )
}

#: The kinds a partner's statement bills (a bonus only when a partner funds it).
BILLED_KINDS = tuple(name for name, k in KINDS.items() if k.price is not None)
#: The kinds that count as points issued (metrics, the demo) and as points redeemed.
ISSUED_KINDS = tuple(name for name, k in KINDS.items() if k.issued)
REDEEMED_KINDS = tuple(name for name, k in KINDS.items() if k.redeemed)
#: The kinds that count in a member's tier basis, with their sign.
TIER_SIGNS = {name: k.tier_sign for name, k in KINDS.items() if k.tier_sign}


def sql_in(column: str, names: tuple[str, ...] | list[str]) -> str:
    """``column IN ('a', 'b')`` over kind names (constants, never user input)."""
    return f"{column} IN ({', '.join(repr(n) for n in names)})"


def sql_price(kind: str, issue: str, reimburse: str) -> str:
    """The rate-card price a line of ``kind`` (an SQL expression) is billed at, as SQL."""
    reimbursed = [name for name, k in KINDS.items() if k.price == "reimburse"]
    return f"CASE WHEN {sql_in(kind, reimbursed)} THEN {reimburse} ELSE {issue} END"


def sql_case(kind: str, names: tuple[str, ...] | list[str], value: str, other: str = "0") -> str:
    """``CASE WHEN kind IN names THEN value ELSE other END`` (SQL)."""
    return f"CASE WHEN {sql_in(kind, names)} THEN {value} ELSE {other} END"


def sql_tier_points(kind: str, points: str) -> str:
    """What a transfer adds to its member's tier basis, as SQL (0 for the other kinds)."""
    whens = " ".join(f"WHEN '{name}' THEN {sign} * {points}" for name, sign in TIER_SIGNS.items())
    return f"CASE {kind} {whens} ELSE 0 END"


def sql_roles(kind: str, partner: str, debit_role: str, credit_role: str) -> str:
    """SQL true when a transfer's accounts have the roles its kind declares (``kind``,
    ``partner``: its kind and partner columns; ``debit_role``, ``credit_role``: the ``kind``
    of the accounts it debits and credits)."""

    def roles(k: Kind, debit: str, credit: str) -> str:
        if k.unfunded is None:
            return f"{debit_role} = '{debit}' AND {credit_role} = '{credit}'"
        unfunded = k.unfunded.value
        other = {debit: unfunded} if debit != Role.MEMBER else {credit: unfunded}
        return (
            f"(({partner} IS NOT NULL AND {debit_role} = '{debit}' AND {credit_role} = '{credit}')"
            f" OR ({partner} IS NULL AND {debit_role} = '{other.get(debit, debit)}'"
            f" AND {credit_role} = '{other.get(credit, credit)}'))"
        )

    cases = []
    for name, k in KINDS.items():
        ways = [roles(k, k.debit.value, k.credit.value)]
        if k.either_way:
            ways.append(roles(k, k.credit.value, k.debit.value))
        cases.append(f"({kind} = '{name}' AND ({' OR '.join(ways)}))")
    return "(" + " OR ".join(cases) + ")"


def sql_member_points(kind: str, points: str, debit: str) -> str:
    """What a transfer adds to its member's balance, as SQL (``kind``, ``points``, ``debit``:
    its columns): its points when its kind credits the member, minus them when it debits it;
    a kind that goes either way (an adjustment) credits the member when it debits the
    operator account of its role (whose id is fixed, :data:`OPERATOR_ACCOUNTS`)."""
    whens = []
    for name, k in KINDS.items():
        if k.either_way:
            other = k.debit if k.member_credited else k.credit
            whens.append(
                f"WHEN '{name}' THEN CASE WHEN {debit} = {OPERATOR_ACCOUNTS[other.value]}"
                f" THEN {points} ELSE -{points} END"
            )
        else:
            whens.append(f"WHEN '{name}' THEN {k.liability_sign} * {points}")
    return f"CASE {kind} {' '.join(whens)} END"
