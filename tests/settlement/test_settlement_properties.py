"""Property: thousands of random earns, burns, holds, captures, voids, reversals, bonuses and
expiries over partners in JPY, EUR and BHD, closed over several periods. Every statement total
equals the test's own recomputation (its model of the transactions it made and the rates it
set, not the service's queries); each line is points x unit_price rounded half-even; every
period's roll-forward balances and chains into the next; ``coalition check`` holds."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from sqlalchemy import select

from coalition.db import transaction
from coalition.errors import CoalitionError
from coalition.models import Transaction
from partners.models import RateCard
from settlement.close import Closed
from settlement.reports import summary
from tests.conftest import Db
from tests.settlement.helpers import close_at, document_totals, documents, ref

OPERATIONS = 2400
PERIODS = 4
EXPONENT = {"JPY": 0, "EUR": 2, "BHD": 3}
#: (currency, earn per unit, issue price, burn value, reimburse price; the later issue price)
CARDS = (
    ("JPY", "0.02", "1.6", "1.5", "1.25", "1.55"),
    ("EUR", "1", "0.0095", "0.01", "0.0085", "0.0105"),
    ("BHD", "0.5", "0.0035", "0.004", "0.0031", "0.00333"),
    ("EUR", "2", "0.00475", "0.005", "0.00425", "0.0049"),
)
AMOUNTS = {"JPY": (300, 90_000, 0), "EUR": (1, 400, 2), "BHD": (1, 150, 3)}


@dataclass(frozen=True)
class Posted:
    """What the test knows of a transaction it made."""

    id: str
    partner_id: str | None
    kind: str
    points: int
    card_id: str | None
    posted_at: datetime


def _minor(points: int, price: Decimal, currency: str) -> int:
    scaled = (points * price).scaleb(EXPONENT[currency])
    return int(scaled.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def _model(
    posted: list[Posted],
    prices: dict[str, tuple[Decimal, Decimal]],
    partner_id: str,
    currency: str,
    start: datetime,
    end: datetime,
) -> dict[str, int]:
    out = dict.fromkeys(
        ("issued_points", "issued", "earn_reversed", "redeemed_points", "reimbursed",
         "burn_reversed", "lines"),
        0,
    )  # fmt: skip
    for t in posted:
        if t.partner_id != partner_id or not start <= t.posted_at < end or t.kind == "expiry":
            continue
        assert t.card_id is not None
        issue, reimburse = prices[t.card_id]
        out["lines"] += 1
        if t.kind in ("earn", "bonus"):
            out["issued_points"] += t.points
            out["issued"] += _minor(t.points, issue, currency)
        elif t.kind == "earn_reversal":
            out["earn_reversed"] += _minor(t.points, issue, currency)
        elif t.kind == "burn":
            out["redeemed_points"] += t.points
            out["reimbursed"] += _minor(t.points, reimburse, currency)
        else:
            assert t.kind == "burn_reversal", t.kind
            out["burn_reversed"] += _minor(t.points, reimburse, currency)
    out["net"] = out["reimbursed"] - out["issued"] + out["earn_reversed"] - out["burn_reversed"]
    return out


def test_statements_equal_an_independent_model_over_several_periods(db: Db) -> None:
    rng = random.Random(20261201)
    db.configure(points_validity_days=3)
    partners = []
    prices: dict[str, tuple[Decimal, Decimal]] = {}
    for currency, earn, issue, burn, reimburse, _ in CARDS:
        partner = db.partner(currency, earn=earn, issue=issue, burn=burn, reimburse=reimburse)
        partners.append(partner)
        with transaction(db.sessions) as s:
            (card_id,) = s.scalars(select(RateCard.id).where(RateCard.partner_id == partner.id))
        prices[card_id] = (Decimal(issue), Decimal(reimburse))
    members = [db.ops.create_member()[0] for _ in range(30)]
    posted: list[Posted] = []
    earns: dict[str, list[str]] = {p.id: [] for p in partners}
    burns: dict[str, list[str]] = {p.id: [] for p in partners}
    holds: list[tuple[str, str]] = []
    closes: list[Closed] = []
    changed = False

    def keep(txn: Transaction) -> None:
        posted.append(
            Posted(txn.id, txn.partner_id, txn.kind, txn.points, txn.rate_card_id, txn.posted_at)
        )

    for step in range(OPERATIONS + 1):
        if step % 97 == 0:
            db.ops.expire_points(db.clock())
        if not changed and step == OPERATIONS // 2:
            changed = True
            for p, (_, earn, _, burn, reimburse, later) in zip(partners, CARDS, strict=True):
                card = db.rate_card(
                    p.id,
                    earn=earn,
                    issue=later,
                    burn=burn,
                    reimburse=reimburse,
                    effective_from=db.clock() + timedelta(seconds=30),
                )
                prices[card.id] = (Decimal(later), Decimal(reimburse))
        if step and step % (OPERATIONS // PERIODS) == 0:
            db.clock.advance(seconds=5)
            closes.append(close_at(db, db.clock() - timedelta(seconds=rng.randrange(0, 4))))

        if step == OPERATIONS:
            break
        db.clock.advance(seconds=rng.randrange(1, 240))
        partner = rng.choice(partners)
        member = rng.choice(members)
        roll = rng.random()
        try:
            if roll < 0.45:
                low, high, places = AMOUNTS[partner.currency]
                amount = Decimal(rng.randrange(low * 10**places, high * 10**places)).scaleb(-places)
                occurred = None
                if rng.random() < 0.05:
                    occurred = db.clock() - timedelta(minutes=rng.randrange(1, 120))
                txn = db.ops.earn(
                    partner.id,
                    member_id=member,
                    reference=ref(),
                    amount=str(amount),
                    currency=partner.currency,
                    occurred_at=occurred,
                ).transaction
                earns[partner.id].append(txn.id)
            elif roll < 0.63:
                txn = db.ops.burn(
                    partner.id, member_id=member, reference=ref(), points=rng.randrange(1, 400)
                ).transaction
                burns[partner.id].append(txn.id)
            elif roll < 0.70:
                hold = db.ops.hold(
                    partner.id, member_id=member, reference=ref(), points=rng.randrange(1, 300)
                ).hold
                holds.append((partner.id, hold.id))
                continue
            elif roll < 0.78 and holds:
                owner, hold_id = holds.pop(rng.randrange(len(holds)))
                if rng.random() < 0.3:
                    db.ops.void(owner, hold_id)
                    continue
                txn = db.ops.capture(owner, hold_id).transaction
                burns[owner].append(txn.id)
            elif roll < 0.86 and earns[partner.id]:
                txn = db.ops.reverse(
                    partner.id,
                    rng.choice(earns[partner.id]),
                    reference=ref(),
                    points=rng.randrange(1, 50) if rng.random() < 0.6 else None,
                ).transaction
            elif roll < 0.92 and burns[partner.id]:
                txn = db.ops.reverse(
                    partner.id,
                    rng.choice(burns[partner.id]),
                    reference=ref(),
                    points=rng.randrange(1, 50) if rng.random() < 0.6 else None,
                ).transaction
            else:
                funder = partner.id if rng.random() < 0.7 else "coalition"
                txn = db.ops.bonus(
                    member_id=member, points=rng.randrange(1, 200), reason="promo", funded_by=funder
                ).transaction
        except CoalitionError:
            continue
        keep(txn)
    with transaction(db.sessions) as s:
        expired = s.scalars(select(Transaction.id).where(Transaction.kind == "expiry")).all()
    assert expired and changed and len(closes) == PERIODS

    previous_closing = None
    for closed in closes:
        docs = documents(db, closed)
        for partner in partners:
            doc = docs[partner.id]
            assert document_totals(doc) == _model(
                posted,
                prices,
                partner.id,
                partner.currency,
                closed.period.start_at,
                closed.period.end_at,
            )
            for line in doc["lines"]:
                exact = line["points"] * Decimal(line["unit_price"])
                assert Decimal(line["amount"]) == exact.quantize(
                    Decimal(1).scaleb(-EXPONENT[partner.currency]), rounding=ROUND_HALF_EVEN
                )
        with transaction(db.sessions) as s:
            report = summary(s, closed.period.id)
        assert report.balances
        if previous_closing is not None:
            assert report.opening_points == previous_closing
        previous_closing = report.closing_points
    db.assert_ledger_ok()
