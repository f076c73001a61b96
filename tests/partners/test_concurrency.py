"""Concurrent operations on PostgreSQL: no overdraft, no double capture, one winner per race.

Each operation runs in its own database transaction on its own connection; the threads start
together at a barrier (no sleeps), and the outcome must be the same as some serial order.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

import pytest
from sqlalchemy import func, select

from coalition.errors import (
    CoalitionError,
    DuplicateReference,
    HoldNotActive,
    InsufficientPoints,
    ReversalExceedsOriginal,
)
from coalition.ledger import Posted
from coalition.models import Hold, Member, Transaction
from partners.operations import HoldResult
from tests.conftest import Db

T = TypeVar("T")

pytestmark = pytest.mark.postgres


def race(threads: int, work: Callable[[int], T]) -> list[T | CoalitionError]:
    """Run ``work(i)`` in ``threads`` threads released together; each result or domain error.

    Any other exception fails the test.
    """
    barrier = threading.Barrier(threads)
    results: list[T | CoalitionError | None] = [None] * threads
    unexpected: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait(timeout=60)
        try:
            results[i] = work(i)
        except CoalitionError as exc:
            results[i] = exc
        except BaseException as exc:
            unexpected.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in pool), "a thread did not finish"
    assert not unexpected, unexpected
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def outcomes(results: Sequence[object]) -> Counter[str]:
    """How many calls succeeded and which errors the others got."""
    return Counter("ok" if not isinstance(r, CoalitionError) else type(r).__name__ for r in results)


def test_concurrent_burns_succeed_exactly_as_often_as_the_balance_allows(pg: Db) -> None:
    shop = pg.partner("EUR")
    member = pg.member(1000, shop)

    results = race(
        50,
        lambda i: pg.ops.burn(shop.id, member_id=member, reference=f"burn-{i}", points=30),
    )

    assert outcomes(results) == {"ok": 33, "InsufficientPoints": 17}
    posted = [r for r in results if isinstance(r, Posted)]
    # Each burn saw the balance its predecessor left: the burns were serialized.
    assert sorted(p.member.balance for p in posted) == [1000 - 30 * k for k in range(33, 0, -1)]
    assert all(p.member.balance >= 0 for p in posted)
    refused = [r for r in results if isinstance(r, InsufficientPoints)]
    assert {r.extra["available"] for r in refused} == {10}
    balance = pg.ops.balance(member)
    assert (balance.available, balance.held) == (10, 0)
    pg.assert_ledger_ok()


def test_concurrent_holds_reserve_no_more_than_the_balance(pg: Db) -> None:
    shop = pg.partner("EUR")
    member = pg.member(1000, shop)

    results = race(
        50,
        lambda i: pg.ops.hold(shop.id, member_id=member, reference=f"hold-{i}", points=30),
    )

    assert outcomes(results) == {"ok": 33, "InsufficientPoints": 17}
    held = sorted(r.member.held for r in results if isinstance(r, HoldResult))
    assert held == [30 * k for k in range(1, 34)]
    balance = pg.ops.balance(member)
    assert (balance.available, balance.held) == (10, 990)
    # The holds still let nothing else through.
    with pytest.raises(InsufficientPoints):
        pg.ops.burn(shop.id, member_id=member, reference="after", points=11)
    pg.assert_ledger_ok()


def test_concurrent_captures_of_one_hold_capture_it_once(pg: Db) -> None:
    shop = pg.partner("EUR")
    member = pg.member(500, shop)
    hold = pg.ops.hold(shop.id, member_id=member, reference="cart", points=200).hold

    results = race(20, lambda _i: pg.ops.capture(shop.id, hold.id))

    assert outcomes(results) == {"ok": 1, "HoldNotActive": 19}
    assert all(r.extra["status"] == "captured" for r in results if isinstance(r, HoldNotActive))
    balance = pg.ops.balance(member)
    assert (balance.available, balance.held) == (300, 0)
    with pg.sessions() as s:
        burns = s.scalar(select(func.count()).where(Transaction.hold_id == hold.id))
    assert burns == 1
    pg.assert_ledger_ok()


def test_capture_racing_void_of_one_hold_has_exactly_one_winner(pg: Db) -> None:
    shop = pg.partner("EUR")
    member = pg.member(1000, shop)
    holds = [
        pg.ops.hold(shop.id, member_id=member, reference=f"cart-{n}", points=100).hold
        for n in range(4)
    ]
    captured = 0
    for hold in holds:

        def capture_or_void(i: int, hold_id: str = hold.id) -> Posted | HoldResult:
            if i % 2:
                return pg.ops.capture(shop.id, hold_id, points=60)
            return pg.ops.void(shop.id, hold_id)

        results = race(10, capture_or_void)

        assert outcomes(results) == {"ok": 1, "HoldNotActive": 9}
        [winner] = [r for r in results if not isinstance(r, CoalitionError)]
        with pg.sessions() as s:
            status = s.scalar(select(Hold.status).where(Hold.id == hold.id))
        assert status == ("captured" if isinstance(winner, Posted) else "voided")
        captured += 60 if isinstance(winner, Posted) else 0

    balance = pg.ops.balance(member)
    assert (balance.available, balance.held) == (1000 - captured, 0)
    pg.assert_ledger_ok()


def test_concurrent_earns_with_one_reference_write_one_transaction(pg: Db) -> None:
    shop = pg.partner("EUR")
    members = [pg.member() for _ in range(20)]

    results = race(
        20,
        lambda i: pg.ops.earn(
            shop.id, member_id=members[i], reference="receipt-1", amount="10.00", currency="EUR"
        ),
    )

    assert outcomes(results) == {"ok": 1, "DuplicateReference": 19}
    [winner] = [r for r in results if isinstance(r, Posted)]
    named = {r.extra["transaction_id"] for r in results if isinstance(r, DuplicateReference)}
    assert named == {winner.transaction.id}
    with pg.sessions() as s:
        earns = s.scalar(
            select(func.count()).where(
                Transaction.partner_id == shop.id, Transaction.reference == "receipt-1"
            )
        )
        balances = s.scalar(select(func.sum(Member.balance)).where(Member.id.in_(members)))
    assert earns == 1
    assert balances == 10
    pg.assert_ledger_ok()


def test_concurrent_holds_with_one_reference_place_one_hold(pg: Db) -> None:
    shop = pg.partner("EUR")
    member = pg.member(1000, shop)

    results = race(
        20, lambda _i: pg.ops.hold(shop.id, member_id=member, reference="cart", points=10)
    )

    assert outcomes(results) == {"ok": 1, "DuplicateReference": 19}
    [winner] = [r for r in results if isinstance(r, HoldResult)]
    named = {r.extra["hold_id"] for r in results if isinstance(r, DuplicateReference)}
    assert named == {winner.hold.id}
    assert pg.ops.balance(member).held == 10
    pg.assert_ledger_ok()


def test_concurrent_partial_reversals_never_reverse_more_than_the_earn(pg: Db) -> None:
    shop = pg.partner("EUR")
    member = pg.member()
    earn = pg.ops.earn(shop.id, member_id=member, reference="sale", amount="100.00", currency="EUR")
    assert earn.transaction.points == 100

    results = race(
        30,
        lambda i: pg.ops.reverse(shop.id, earn.transaction.id, reference=f"refund-{i}", points=7),
    )

    assert outcomes(results) == {"ok": 14, "ReversalExceedsOriginal": 16}
    assert {r.extra["remaining_points"] for r in results if isinstance(r, CoalitionError)} == {2}
    # What is left can still be reversed, and then nothing more.
    last = pg.ops.reverse(shop.id, earn.transaction.id, reference="refund-last")
    assert last.transaction.points == 2
    with pytest.raises(ReversalExceedsOriginal):
        pg.ops.reverse(shop.id, earn.transaction.id, reference="refund-more", points=1)
    with pg.sessions() as s:
        points, amount = s.execute(
            select(func.sum(Transaction.points), func.sum(Transaction.amount_minor)).where(
                Transaction.reverses == earn.transaction.id
            )
        ).one()
    assert (points, amount) == (100, 10000)
    assert pg.ops.balance(member).available == 0
    pg.assert_ledger_ok()


def test_expiry_jobs_running_at_once_expire_each_member_once(pg: Db) -> None:
    shop = pg.partner("EUR")
    members = [pg.member(100, shop) for _ in range(30)]
    holders = members[:10]
    for n, member in enumerate(holders):
        pg.ops.hold(shop.id, member_id=member, reference=f"h-{n}", points=40, expires_in=60)
    pg.clock.advance(days=pg.settings.points_validity_days)

    def job(i: int) -> int:
        return pg.ops.expire_holds() if i % 2 else pg.ops.expire_points()

    race(6, job)
    # Whatever the interleaving, a second round finishes the work and a third finds none.
    race(6, job)
    assert pg.ops.expire_holds() == 0
    assert pg.ops.expire_points() == 0

    with pg.sessions() as s:
        expired = s.execute(
            select(Transaction.member_id, func.sum(Transaction.points))
            .where(Transaction.kind == "expiry")
            .group_by(Transaction.member_id)
        ).all()
        active = s.scalar(select(func.count()).where(Hold.status == "active"))
    assert {m: int(p) for m, p in expired} == dict.fromkeys(members, 100)
    assert active == 0
    pg.assert_ledger_ok()


def test_a_burn_racing_expiry_spends_no_expired_points(pg: Db) -> None:
    shop = pg.partner("EUR")
    members = [pg.member(100, shop) for _ in range(10)]
    pg.clock.advance(days=pg.settings.points_validity_days, seconds=-1)
    for n, member in enumerate(members):
        pg.ops.earn(shop.id, member_id=member, reference=f"fresh-{n}", amount="50", currency="EUR")
    pg.clock.advance(seconds=1)  # the first 100 points of each member are now past their date

    def burn_or_expire(i: int) -> object:
        if i < len(members):
            return pg.ops.burn(shop.id, member_id=members[i], reference=f"b-{i}", points=60)
        return pg.ops.expire_points()

    results = race(len(members) + 2, burn_or_expire)

    assert outcomes(results[: len(members)]) == {"InsufficientPoints": len(members)}
    pg.ops.expire_points()
    for member in members:
        assert pg.ops.balance(member).available == 50
    pg.assert_ledger_ok()


def test_no_member_is_changed_by_two_transactions_at_once(pg: Db) -> None:
    """Burns, holds, earns and clawbacks on one member, mixed: the ledger stays consistent."""
    shop = pg.partner("EUR")
    member = pg.member(600, shop)
    earn = pg.ops.earn(shop.id, member_id=member, reference="big", amount="400", currency="EUR")
    pg.clock.advance(seconds=1)

    def mixed(i: int) -> object:
        match i % 4:
            case 0:
                return pg.ops.burn(shop.id, member_id=member, reference=f"b-{i}", points=90)
            case 1:
                return pg.ops.hold(shop.id, member_id=member, reference=f"h-{i}", points=50)
            case 2:
                return pg.ops.earn(
                    shop.id, member_id=member, reference=f"e-{i}", amount="5", currency="EUR"
                )
            case _:
                return pg.ops.reverse(shop.id, earn.transaction.id, reference=f"r-{i}", points=30)

    results = race(40, mixed)

    counts = outcomes(results)
    assert set(counts) <= {"ok", "InsufficientPoints", "ReversalExceedsOriginal"}
    state = pg.ops.balance(member)
    with pg.sessions() as s:
        reversed_points = s.scalar(
            select(func.coalesce(func.sum(Transaction.points), 0)).where(
                Transaction.reverses == earn.transaction.id
            )
        )
    assert int(reversed_points or 0) <= 400
    assert state.held == 50 * sum(1 for r in results if isinstance(r, HoldResult))
    pg.assert_ledger_ok()
