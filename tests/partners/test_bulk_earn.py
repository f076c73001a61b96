"""Bulk earns (``Operations.earn_many``): the same results as ``earn`` item by item, in order.

Each test mirrors one coalition twice in one database: partner A with its members takes the
batch through ``earn_many``, partner B (the same rate cards) with mirrored members takes the same
items through ``earn`` one by one. Members are per side, so nothing one side does is seen by the
other; everything but the ids must come out the same.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coalition import ledger
from coalition.db import transaction
from coalition.errors import CoalitionError, ValidationFailed
from coalition.ledger import Header, Posted
from coalition.models import Lot, Member, Transaction, TransactionKind
from partners.models import Partner, RateCard
from partners.operations import EARN_BATCH_MAX, EarnItem
from partners.rates import update_partner
from tests.conftest import Db
from tests.partners.test_concurrency import race


@dataclass
class Side:
    partner: Partner
    members: list[str]
    cards: list[str]  # rate card ids, oldest first
    accounts: list[int]  # the members' accounts


def _side(db: Db, name: str, members: int) -> Side:
    partner = db.partner("EUR", earn="1.5", name=name)
    ids = [db.ops.create_member()[0] for _ in range(members)]
    with db.sessions() as s:
        accounts = [
            int(s.scalar(select(Member.account_id).where(Member.id == m)) or 0) for m in ids
        ]
    return Side(partner, ids, [], accounts)


def _mirror(item: EarnItem, src: Side, dst: Side) -> EarnItem:
    member = item.member_id
    if member in src.members:
        member = dst.members[src.members.index(member)]
    return EarnItem(member, item.reference, item.amount, item.currency, item.occurred_at)


def _outcome(result: Posted | CoalitionError, side: Side) -> tuple[Any, ...]:
    """Everything of a result but its ids (member and card ids as their index on the side)."""
    if isinstance(result, CoalitionError):
        extra = {k: v for k, v in result.extra.items() if k != "transaction_id"}
        return ("error", type(result).__name__, result.code, str(extra.get("errors", "")))
    txn = result.transaction
    return (
        "posted",
        side.members.index(txn.member_id),
        txn.kind,
        txn.reference,
        txn.points,
        txn.amount_minor,
        txn.currency,
        txn.tier,
        side.cards.index(txn.rate_card_id) if txn.rate_card_id else None,
        txn.balance_after,
        txn.occurred_at,
        txn.posted_at,
        result.member.balance,
        result.member.held,
        # The transfer: from the side's partner's issued account to its member's account.
        txn.debit_account_id == side.partner.issued_account_id,
        txn.credit_account_id == side.accounts[side.members.index(txn.member_id)],
    )


def _one_by_one(db: Db, side: Side, items: list[EarnItem]) -> list[Posted | CoalitionError]:
    results: list[Posted | CoalitionError] = []
    for item in items:
        try:
            results.append(
                db.ops.earn(
                    side.partner.id,
                    member_id=item.member_id,
                    reference=item.reference,
                    amount=item.amount,
                    currency=item.currency,
                    occurred_at=item.occurred_at,
                )
            )
        except CoalitionError as exc:
            results.append(exc)
    return results


def _state(db: Db, side: Side) -> list[tuple[Any, ...]]:
    """Each member's balance, held points, tier basis and lots (creation order), ids left
    out."""
    out = []
    with db.sessions() as s:
        for member in side.members:
            balance, held, *tier = s.execute(
                select(
                    Member.balance,
                    Member.held,
                    Member.tier_day,
                    Member.tier_since_day,
                    Member.tier_points,
                ).where(Member.id == member)
            ).one()
            lots = s.execute(
                select(Lot.points, Lot.remaining, Lot.expires_at, Lot.is_deficit)
                .where(Lot.member_id == member)
                .order_by(Lot.expires_at, Lot.points, Lot.remaining)
            ).all()
            out.append((balance, held, tuple(tier), [tuple(lot) for lot in lots]))
    return out


def _setup(db: Db, members: int = 6) -> tuple[Side, Side]:
    """Two mirrored sides: member 0 just under the silver threshold (5,000), member 1 owes
    points after a clawback, a rate-card change (double points) one day ago on both."""
    a, b = _side(db, "Bulk", members), _side(db, "One by one", members)
    for side in (a, b):
        pid = side.partner.id
        near = db.ops.earn(
            pid, member_id=side.members[0], reference="s0", amount="3300", currency="EUR"
        )
        assert near.transaction.points == 4950
        spent = db.ops.earn(
            pid, member_id=side.members[1], reference="s1", amount="100", currency="EUR"
        )
        db.ops.burn(pid, member_id=side.members[1], reference="b1", points=140)
        db.ops.reverse(pid, spent.transaction.id, reference="r1")
        db.ops.earn(pid, member_id=side.members[2], reference="used", amount="10", currency="EUR")
    for side in (a, b):
        db.rate_card(side.partner.id, earn="3", effective_from=db.clock() + timedelta(days=1))
    db.clock.advance(days=2)
    with db.sessions() as s:
        for side in (a, b):
            side.cards = list(
                s.scalars(
                    select(RateCard.id)
                    .where(RateCard.partner_id == side.partner.id)
                    .order_by(RateCard.effective_from)
                )
            )
    with db.sessions() as s:
        owing = s.scalar(select(Member.balance).where(Member.id == a.members[1]))
    assert owing is not None and owing < 0
    return a, b


def _items(db: Db, side: Side, rng: random.Random, count: int) -> list[EarnItem]:
    now = db.clock()
    items = []
    for n in range(count):
        member = rng.choice(side.members)
        amount = f"{rng.randint(1, 4000)}.{rng.randint(0, 99):02d}"
        occurred = None
        if rng.random() < 0.5:
            # Some before the rate-card change (one day ago), some after.
            occurred = now - timedelta(hours=rng.uniform(0, 40))
        reference = f"i{n}" if rng.random() > 0.1 else f"i{rng.randrange(max(n, 1))}"
        items.append(EarnItem(member, reference, amount, "EUR", occurred))
    # The rules' refusals, each once: a reference already in the ledger, an unknown member,
    # another currency, too many decimals, no whole point, the future, an expired date, a bad
    # reference.
    m = side.members[3]
    items[1:1] = [
        EarnItem(m, "used", "10", "EUR"),
        EarnItem("mem_nobody", "x1", "10", "EUR"),
        EarnItem(m, "x2", "10", "USD"),
        EarnItem(m, "x3", "10.001", "EUR"),
        EarnItem(m, "x4", "0.10", "EUR", now - timedelta(hours=40)),
        EarnItem(m, "x5", "10", "EUR", now + timedelta(hours=1)),
        EarnItem(m, "x6", "10", "EUR", now - timedelta(days=5000)),
        EarnItem(m, "bad ref", "10", "EUR"),
    ]
    return items


def _compare(db: Db, a: Side, b: Side, items: list[EarnItem]) -> list[Posted | CoalitionError]:
    bulk = db.ops.earn_many(a.partner.id, items)
    single = _one_by_one(db, b, [_mirror(item, a, b) for item in items])
    assert len(bulk) == len(single) == len(items)
    for n, (x, y) in enumerate(zip(bulk, single, strict=True)):
        assert _outcome(x, a) == _outcome(y, b), (n, items[n])
    assert _state(db, a) == _state(db, b)
    db.assert_ledger_ok()
    return bulk


def test_earn_many_gives_what_earn_gives_item_by_item(db: Db) -> None:
    a, b = _setup(db)
    rng = random.Random(20261122)
    bulk = _compare(db, a, b, _items(db, a, rng, 60))
    codes = {r.code for r in bulk if isinstance(r, CoalitionError)}
    assert {"duplicate-reference", "unknown-member", "currency-mismatch", "validation"} <= codes
    posted = [r for r in bulk if isinstance(r, Posted)]
    assert {r.transaction.tier for r in posted} >= {"base", "silver"}  # member 0 crossed
    assert len({r.transaction.rate_card_id for r in posted}) == 2  # the change, straddled
    assert any(r.transaction.member_id == a.members[1] for r in posted)  # the deficit filled
    # A second batch on top: the history it reads now includes the first batch.
    _compare(db, a, b, _items(db, a, rng, 40))


@pytest.mark.parametrize("seed", range(4))
def test_random_batches_match_one_by_one(lite: Db, seed: int) -> None:
    a, b = _setup(lite, members=4)
    rng = random.Random(seed)
    for _ in range(3):
        _compare(lite, a, b, _items(lite, a, rng, rng.randint(1, 50)))
        lite.clock.advance(hours=rng.uniform(1, 30))


# A batch of earns drawn by hypothesis: members (one owes points), amounts, backdating within
# the rate-card change, references that repeat.
_ITEMS = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.integers(1, 400_000),
        st.none() | st.floats(0, 40),
        st.integers(0, 30),
    ),
    min_size=1,
    max_size=30,
)


@pytest.mark.parametrize("window_days", [1, 2, 365])
def test_any_batch_posted_at_once_leaves_what_its_earns_posted_one_by_one_leave(
    lite: Db, window_days: int
) -> None:
    # A window of a day or two: the batch's backdated earns and the days between examples
    # roll the members' tier windows (coalition.ledger.tiers), as one by one does.
    lite.configure(tier_window_days=window_days)
    a, b = _setup(lite, members=4)
    round_ = iter(range(1_000_000))

    @settings(max_examples=25, deadline=None, database=None, print_blob=True)
    @given(_ITEMS)
    def run(drawn: list[tuple[int, int, float | None, int]]) -> None:
        now = lite.clock()
        n = next(round_)
        items = [
            EarnItem(
                a.members[member],
                f"h{n}-{reference}",
                f"{cents // 100}.{cents % 100:02d}",
                "EUR",
                None if hours is None else now - timedelta(hours=hours),
            )
            for member, cents, hours, reference in drawn
        ]
        _compare(lite, a, b, items)
        lite.clock.advance(hours=drawn[0][1] % 30)

    run()


def test_a_batch_runs_a_handful_of_statements_whatever_its_size(lite: Db) -> None:
    a, _ = _setup(lite, members=6)
    items = [
        EarnItem(a.members[n % 6 if n % 6 != 1 else 0], f"n{n}", "12.34", "EUR") for n in range(500)
    ]
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(str(args[2]))

    event.listen(lite.engine, "before_cursor_execute", count)
    try:
        results = lite.ops.earn_many(a.partner.id, items)
    finally:
        event.remove(lite.engine, "before_cursor_execute", count)
    assert all(isinstance(r, Posted) for r in results)
    # partner, references, members, rate cards, tier history, 3 inserts, 1 update (+ BEGIN);
    # SQLite's driver may split an executemany INSERT into several multi-row statements.
    assert len(seen) <= 20, seen
    lite.assert_ledger_ok()


def test_a_batch_is_bounded(lite: Db) -> None:
    a, _ = _setup(lite, members=3)
    items = [EarnItem(a.members[0], f"n{n}", "1", "EUR") for n in range(EARN_BATCH_MAX + 1)]
    with pytest.raises(ValidationFailed):
        lite.ops.earn_many(a.partner.id, items)


def test_a_batch_for_a_suspended_partner_is_refused_item_by_item(lite: Db) -> None:
    a, _ = _setup(lite, members=3)
    with transaction(lite.sessions) as s:
        update_partner(s, a.partner.id, status="suspended")
    results = lite.ops.earn_many(
        a.partner.id,
        [EarnItem(a.members[0], "ok", "1", "EUR"), EarnItem(a.members[0], "bad ref", "1", "EUR")],
    )
    assert [r.code for r in results if isinstance(r, CoalitionError)] == [
        "partner-not-active",
        "validation",
    ]


@pytest.mark.postgres
def test_concurrent_batches_on_the_same_members_neither_deadlock_nor_lose_points(pg: Db) -> None:
    shop = pg.partner("EUR", earn="1")
    members = [pg.member(1000, shop) for _ in range(6)]

    def work(n: int) -> list[Posted | CoalitionError]:
        if n == 3:  # one-by-one earns and burns among the batches
            out: list[Posted | CoalitionError] = []
            for k, member in enumerate(reversed(members)):
                out.append(
                    pg.ops.earn(
                        shop.id, member_id=member, reference=f"one-{k}", amount="7", currency="EUR"
                    )
                )
                out.append(pg.ops.burn(shop.id, member_id=member, reference=f"b-{k}", points=5))
            return out
        order = members if n % 2 else list(reversed(members))
        items = [
            EarnItem(order[k % len(order)], f"t{n}-{k}", f"{10 + k}", "EUR") for k in range(60)
        ]
        return pg.ops.earn_many(shop.id, items)

    results = race(4, work)
    posted = [p for batch in results for p in batch if isinstance(p, Posted)]  # type: ignore[union-attr]
    assert len(posted) == 3 * 60 + 2 * 6
    with pg.sessions() as s:
        balances = {m: b for m, b in s.execute(select(Member.id, Member.balance))}
    expected = {m: 1000 for m in members}
    for p in posted:
        sign = -1 if p.transaction.kind == "burn" else 1
        expected[p.transaction.member_id] += sign * p.transaction.points
    assert {m: balances[m] for m in members} == expected
    pg.assert_ledger_ok()


def test_a_reference_taken_before_the_bulk_write_fails_the_batch_with_the_unique_key_error(
    db: Db,
) -> None:
    """What a concurrent earn that takes a batch's reference between its check and its write
    does (the bulk write is ``COPY`` on PostgreSQL): the database's unique-key error, as an
    ``IntegrityError`` (the API runs the request again), and nothing of the batch written."""
    shop = db.partner("EUR", earn="1")
    member = db.member()
    db.ops.earn(shop.id, member_id=member, reference="taken", amount="5", currency="EUR")
    now = db.clock()
    credits = [
        ledger.Credit(
            Header(
                kind=TransactionKind.EARN,
                member_id=member,
                points=5,
                occurred_at=now,
                posted_at=now,
                partner_id=shop.id,
                reference=reference,
                amount_minor=500,
                currency="EUR",
            ),
            from_account=shop.issued_account_id,
            origin_partner_id=shop.id,
            expires_at=now + timedelta(days=30),
        )
        for reference in ("fresh", "taken")
    ]

    def post(s: Session) -> None:
        locked = ledger.lock_members(s, [member])
        ledger.post(s, credits, locked, {member: locked[member].tier})

    with pytest.raises(IntegrityError), transaction(db.sessions) as s:
        post(s)
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Transaction)) == 1
    db.assert_ledger_ok()
