"""Partners and their versioned rate cards; the arithmetic that turns money into points.

Rounding rules (docs/recipes.md, "Money and rounding"):
- earn: ``points = floor(amount x earn_points_per_unit x tier multiplier)``;
- burn by points: ``amount = points x burn_value_per_point``, half-even to the currency exponent;
- burn by amount: ``points = ceil(amount / burn_value_per_point)``, then the amount as above;
- statement lines (settlement): ``points x unit_price``, half-even, once per line.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol, cast

from msgspec import Struct
from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from coalition import text
from coalition.errors import (
    BurnCapExceeded,
    Conflict,
    NotFound,
    PartnerNotActive,
    ValidationFailed,
    invariant,
    required,
)
from coalition.hot import HotStatement, first_led
from coalition.ids import new_id
from coalition.models import Account
from coalition.money import (
    DECIMAL_TEXT,
    MAX_AMOUNT,
    MAX_POINTS,
    MoneyError,
    ceil_points,
    exponent,
    floor_points,
    round_money,
    to_minor,
)
from coalition.shapes import row_as
from partners.models import PARTNER_STATUSES, Partner, RateCard
from partners.webhooks import outbox
from partners.webhooks.events import EventType

_PARTNERS = cast("Table", Partner.__table__)
_CARDS = cast("Table", RateCard.__table__)
_CARD_COLUMNS = (
    _CARDS.c.id,
    _CARDS.c.effective_from,
    _CARDS.c.earn_points_per_unit,
    _CARDS.c.issue_price_per_point,
    _CARDS.c.burn_value_per_point,
    _CARDS.c.reimburse_price_per_point,
    _CARDS.c.max_burn_share,
)
# The hot path's lookups, pre-built (docs/benchmarks.md): the partner and the id of its card in
# force at ``:at`` in one statement, then that card's columns joined in, without ORM entities.
_IN_FORCE = _CARDS.alias("in_force")
_CARD_IN_FORCE = (
    select(_IN_FORCE.c.id)
    .where(
        _IN_FORCE.c.partner_id == bindparam("partner"),
        _IN_FORCE.c.effective_from <= bindparam("at"),
    )
    .order_by(_IN_FORCE.c.effective_from.desc())
    .limit(1)
    .scalar_subquery()
)
_PARTNER_TERMS = (
    select(
        _PARTNERS.c.id,
        _PARTNERS.c.currency,
        _PARTNERS.c.status,
        _PARTNERS.c.issued_account_id,
        _PARTNERS.c.redeemed_account_id,
        *_CARD_COLUMNS,
    )
    .select_from(_PARTNERS.outerjoin(_CARDS, _CARDS.c.id == _CARD_IN_FORCE))
    .where(_PARTNERS.c.id == bindparam("partner"))
)
_PARTNER_CARDS = (
    select(*_CARD_COLUMNS)
    .where(_CARDS.c.partner_id == bindparam("partner"))
    .order_by(_CARDS.c.effective_from)
)

#: Rate-card values carry at most this many decimal places (the NUMERIC scale).
#: The longest partner name.
NAME_MAX = 200
RATE_SCALE = 12
#: The largest value of any rate-card field (points per unit of money, or money per point):
#: with :data:`~coalition.money.MAX_AMOUNT` and :data:`~coalition.money.MAX_POINTS` it keeps
#: every product the service computes inside its columns.
MAX_RATE = Decimal(1_000_000)
#: How far in the past a new rate card may start (clock skew between operator and server).
RATE_CARD_BACKDATE = timedelta(minutes=5)
RATE_FIELDS = (
    "earn_points_per_unit",
    "issue_price_per_point",
    "burn_value_per_point",
    "reimburse_price_per_point",
)


def create_partner(session: Session, *, name: str, currency: str, now: datetime) -> Partner:
    """Onboard a partner (active) with its issued and redeemed ledger accounts."""
    errors = []
    try:
        name = text.clean(name, "name", max_length=NAME_MAX)
    except ValidationFailed as exc:
        errors.extend(exc.errors)
    try:
        exponent(currency)
    except MoneyError as exc:
        errors.append({"path": "currency", "message": str(exc)})
    if errors:
        raise ValidationFailed(errors)
    issued = required(
        session.scalar(insert(Account).values(kind="partner_issued").returning(Account.id)),
        "an inserted account has an id",
    )
    redeemed = required(
        session.scalar(insert(Account).values(kind="partner_redeemed").returning(Account.id)),
        "an inserted account has an id",
    )
    partner = Partner(
        id=new_id("prt"),
        name=name,
        currency=currency,
        status="active",
        issued_account_id=issued,
        redeemed_account_id=redeemed,
        created_at=now,
    )
    session.add(partner)
    session.flush()
    return partner


def get_partner(session: Session, partner_id: str) -> Partner:
    """The partner; :class:`NotFound` if there is none."""
    partner = session.get(Partner, partner_id)
    if partner is None:
        raise NotFound(f"no partner {partner_id!r}")
    return partner


def update_partner(
    session: Session,
    partner_id: str,
    *,
    name: str | None = None,
    currency: str | None = None,
    status: str | None = None,
) -> Partner:
    """Rename, suspend or reactivate a partner; its currency changes only before any activity."""
    partner = get_partner(session, partner_id)
    values: dict[str, str] = {}
    if name is not None:
        values["name"] = text.clean(name, "name", max_length=NAME_MAX)
    if status is not None:
        if status not in PARTNER_STATUSES:
            raise ValidationFailed.at("status", f"one of {', '.join(PARTNER_STATUSES)}")
        values["status"] = status
    if currency is not None and currency != partner.currency:
        try:
            exponent(currency)
        except MoneyError as exc:
            raise ValidationFailed.at("currency", str(exc)) from None
        if session.scalar(select(RateCard.id).where(RateCard.partner_id == partner_id).limit(1)):
            raise Conflict("a partner's currency cannot change once it has a rate card")
        values["currency"] = currency
    if values:
        session.execute(update(Partner).where(Partner.id == partner_id).values(**values))
        session.refresh(partner)
    return partner


class Rates(Protocol):
    """What the arithmetic needs of a rate card: a :class:`RateCard` or a :class:`CardTerms`."""

    @property
    def earn_points_per_unit(self) -> Decimal: ...
    @property
    def burn_value_per_point(self) -> Decimal: ...
    @property
    def reimburse_price_per_point(self) -> Decimal: ...
    @property
    def max_burn_share(self) -> Decimal | None: ...


@dataclass(frozen=True, slots=True)
class CardTerms:
    """A rate card's values read without the ORM (the hot path's light row)."""

    id: str
    effective_from: datetime
    earn_points_per_unit: Decimal
    issue_price_per_point: Decimal
    burn_value_per_point: Decimal
    reimburse_price_per_point: Decimal
    max_burn_share: Decimal | None


@dataclass(frozen=True, slots=True)
class PartnerTerms:
    """A partner and its rate card in force at one moment, read in one statement.

    ``card`` is ``None`` when no card was in force yet; :meth:`card_in_force` raises then.
    """

    id: str
    currency: str
    status: str
    issued_account_id: int
    redeemed_account_id: int
    card: CardTerms | None
    at: datetime

    def card_in_force(self) -> CardTerms:
        """The card in force at ``at``; :class:`PartnerNotActive` if none was yet."""
        if self.card is None:
            raise no_card(self.id, self.at)
        return self.card


def no_card(partner_id: str, at: datetime) -> PartnerNotActive:
    """The error for a partner without a rate card in force at ``at``."""
    return PartnerNotActive(f"partner {partner_id} has no rate card in force at {at.isoformat()}")


def partner_terms_with(*extra: Any) -> HotStatement:
    """The statement of :func:`partner_terms` with ``extra`` scalar subqueries as further
    columns (their own bind parameters next to ``:partner`` and ``:at``): what an operation
    needs to know besides the partner, in the same round trip. Build it once, at import."""
    return HotStatement(_PARTNER_TERMS.add_columns(*extra))


_PARTNER_TERMS_ONLY = partner_terms_with()


def read_terms(
    session: Session, stmt: HotStatement, params: dict[str, Any], at: datetime
) -> tuple[PartnerTerms, tuple[Any, ...]]:
    """Run a :func:`partner_terms_with` statement: the partner's terms at ``at`` and the
    values of the extra columns. :class:`NotFound` if there is no such partner. An operation's
    first statement: a :class:`~coalition.hot.Lead` the session holds (the Idempotency-Key
    claim) rides it (:func:`~coalition.hot.first_led`)."""
    row = first_led(session, stmt, {**params, "at": at})
    if row is None:
        raise NotFound(f"no partner {params['partner']!r}")
    width = 5 + len(_CARD_COLUMNS)
    card = _card(tuple(row[5:width])) if row[5] is not None else None
    return PartnerTerms(row[0], row[1], row[2], row[3], row[4], card, at), tuple(row[width:])


def partner_terms(session: Session, partner_id: str, at: datetime) -> PartnerTerms:
    """The partner and its rate card in force at ``at``, in one Core statement (the hot path).

    :class:`NotFound` if there is no such partner; the missing card is raised only when asked
    for (:meth:`PartnerTerms.card_in_force`), so the errors keep their order.
    """
    return read_terms(session, _PARTNER_TERMS_ONLY, {"partner": partner_id}, at)[0]


def require_active(terms: PartnerTerms) -> PartnerTerms:
    """``terms`` of a partner that must be active for new business (:class:`PartnerNotActive`).

    A suspended partner still finishes what it started: captures and voids of its holds and
    reversals (refunds) of its transactions go through.
    """
    if terms.status != "active":
        raise PartnerNotActive(f"partner {terms.id} is {terms.status}")
    return terms


def active_partner_terms(session: Session, partner_id: str, at: datetime) -> PartnerTerms:
    """:func:`partner_terms` of a partner that must be active for new business: earn, burn,
    hold (:func:`require_active`)."""
    return require_active(partner_terms(session, partner_id, at))


@dataclass(frozen=True, slots=True)
class RateCardHistory:
    """Every version of a partner's rate card, to find the one in force at many moments."""

    partner_id: str
    cards: Sequence[CardTerms]

    def at(self, at: datetime) -> CardTerms:
        """The card in force at ``at``; :class:`PartnerNotActive` if none was yet."""
        n = bisect_right([c.effective_from for c in self.cards], at)
        if n == 0:
            raise no_card(self.partner_id, at)
        return self.cards[n - 1]


def rate_card_history(session: Session, partner_id: str) -> RateCardHistory:
    """The partner's rate cards, oldest first, in one statement (the bulk path's lookup)."""
    rows = session.execute(_PARTNER_CARDS, {"partner": partner_id}).all()
    return RateCardHistory(partner_id, [_card(tuple(row)) for row in rows])


def _card(values: tuple[Any, ...]) -> CardTerms:
    """A card from its columns as SQLAlchemy or the driver returns them (:class:`HotStatement`:
    the time in the connection's zone, the rates not normalised)."""
    card_id, effective_from, earn, issue, burn, reimburse, share = values
    return CardTerms(
        card_id,
        effective_from.astimezone(UTC),
        earn.normalize(),
        issue.normalize(),
        burn.normalize(),
        reimburse.normalize(),
        None if share is None else share.normalize(),
    )


def _rate(raw: object, path: str, *, positive: bool = False) -> Decimal:
    if isinstance(raw, str) and not DECIMAL_TEXT.fullmatch(raw):
        raise ValidationFailed.at(path, "a decimal number (digits, optionally a point and digits)")
    try:
        value = Decimal(str(raw)) if not isinstance(raw, Decimal) else raw
    except (InvalidOperation, ValueError):
        raise ValidationFailed.at(path, "a decimal number") from None
    if not value.is_finite():
        raise ValidationFailed.at(path, "a finite decimal number")
    if value < 0 or (positive and value == 0):
        raise ValidationFailed.at(path, "must be positive" if positive else "may not be negative")
    if value > MAX_RATE:  # first: rounding a larger one to the scale may exceed the precision
        raise ValidationFailed.at(path, f"at most {MAX_RATE}")
    if value != round(value, RATE_SCALE):
        raise ValidationFailed.at(path, f"at most {RATE_SCALE} decimal places")
    return value


def check_worth(points: int, unit_price: Decimal, path: str) -> None:
    """:class:`ValidationFailed` at ``path`` when ``points`` at ``unit_price`` per point are
    worth more than :data:`~coalition.money.MAX_AMOUNT`: the most one operation, and so one
    statement line, may be worth (:func:`~coalition.money.line_fits` at the close)."""
    if points * unit_price > MAX_AMOUNT:
        raise ValidationFailed.at(
            path,
            f"{points} points are worth more than {MAX_AMOUNT} at the rate card's price; "
            "split the operation",
        )


def create_rate_card(
    session: Session,
    partner_id: str,
    *,
    earn_points_per_unit: object,
    issue_price_per_point: object,
    burn_value_per_point: object,
    reimburse_price_per_point: object,
    max_burn_share: object | None,
    effective_from: datetime | None,
    now: datetime,
) -> RateCard:
    """Add a rate-card version. It never replaces one in place and may not start in the past."""
    get_partner(session, partner_id)
    effective = effective_from or now
    if effective < now - RATE_CARD_BACKDATE:
        raise ValidationFailed.at("effective_from", "a rate card may not start in the past")
    latest = session.scalar(
        select(RateCard.effective_from)
        .where(RateCard.partner_id == partner_id)
        .order_by(RateCard.effective_from.desc())
        .limit(1)
    )
    if latest is not None and effective <= latest:
        raise ValidationFailed.at(
            "effective_from", "must be later than the newest rate card's effective_from"
        )
    share = None
    if max_burn_share is not None:
        share = _rate(max_burn_share, "max_burn_share", positive=True)
        if share > 1:
            raise ValidationFailed.at("max_burn_share", "a share between 0 and 1")
    card = RateCard(
        id=new_id("rc"),
        partner_id=partner_id,
        effective_from=effective,
        earn_points_per_unit=_rate(earn_points_per_unit, "earn_points_per_unit"),
        issue_price_per_point=_rate(issue_price_per_point, "issue_price_per_point"),
        burn_value_per_point=_rate(burn_value_per_point, "burn_value_per_point", positive=True),
        reimburse_price_per_point=_rate(reimburse_price_per_point, "reimburse_price_per_point"),
        max_burn_share=share,
        created_at=now,
    )
    session.add(card)
    session.flush()
    outbox.note(
        session,
        EventType.RATE_CARD_ACTIVATED,
        partner_id,
        rate_card_out(card),
        at=effective,
        due=max(effective, now),
    )
    return card


def _rate_text(value: Decimal) -> str:
    return f"{value.normalize():f}"


#: A card's four rates (every card has them; ``max_burn_share`` is optional).
RATES = (
    "earn_points_per_unit",
    "issue_price_per_point",
    "burn_value_per_point",
    "reimburse_price_per_point",
)


class RateCardOut(Struct):
    """A rate-card version; rates are decimal strings."""

    id: str
    partner_id: str
    effective_from: datetime
    earn_points_per_unit: str
    issue_price_per_point: str
    burn_value_per_point: str
    reimburse_price_per_point: str
    max_burn_share: str | None
    created_at: datetime


def rate_card_out(card: RateCard) -> RateCardOut:
    """A rate-card version in the contract's shape, rates as decimal strings (the API's and
    its ``rate_card.activated`` event's)."""
    rates = {name: _rate_text(getattr(card, name)) for name in RATES}
    share = None if card.max_burn_share is None else _rate_text(card.max_burn_share)
    return row_as(RateCardOut, card, **rates, max_burn_share=share)


def list_rate_cards(session: Session, partner_id: str) -> list[RateCard]:
    """Every version of the partner's rate card, newest first."""
    get_partner(session, partner_id)
    return list(
        session.scalars(
            select(RateCard)
            .where(RateCard.partner_id == partner_id)
            .order_by(RateCard.effective_from.desc())
        )
    )


@dataclass(frozen=True, slots=True)
class BurnPrice:
    """Points and money of a burn."""

    points: int
    amount_minor: int


def earn_points(amount: Decimal, card: Rates, multiplier: Decimal) -> int:
    """Points for a spend: floor(amount x earn_points_per_unit x multiplier)."""
    return floor_points(amount * card.earn_points_per_unit * multiplier)


def burn_price(
    card: Rates,
    currency: str,
    *,
    points: int | None,
    amount: Decimal | None,
    basket_amount: Decimal | None,
) -> BurnPrice:
    """Price a burn given points or an amount; enforce the basket cap when a basket is given.

    Without ``max_burn_share`` points may still pay at most the whole basket.
    """
    invariant((points is None) != (amount is None), "a burn is priced by points or by an amount")
    if points is None:
        points = ceil_points(required(amount, "an amount") / card.burn_value_per_point)
    path = "points" if amount is None else "amount"
    if points > MAX_POINTS:
        raise ValidationFailed.at(path, f"at most {MAX_POINTS} points in one operation")
    check_worth(points, max(card.burn_value_per_point, card.reimburse_price_per_point), path)
    value = round_money(points * card.burn_value_per_point, currency)
    if basket_amount is not None:
        share = card.max_burn_share if card.max_burn_share is not None else Decimal(1)
        cap = basket_amount * share
        if value > cap:
            raise BurnCapExceeded(
                f"points may pay at most {cap.normalize():f} {currency} of this basket "
                f"({share.normalize():f} of {basket_amount}); this burn is worth {value}",
                max_amount=str(round_money(cap, currency)),
            )
    return BurnPrice(points, to_minor(value, currency))
