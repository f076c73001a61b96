"""The tier basis kept per member and UTC day (``qualifying_days``): whatever writes the earns
and reversals (one by one, in bulk, side by side), it equals a recomputation from the
transactions, and a tier window read from it counts exactly the transactions inside it."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update

from coalition import ledger
from coalition.db import transaction
from coalition.models import QualifyingDay, Transaction
from partners.operations import EarnItem
from tests.conftest import Db
from tests.partners.test_concurrency import race

_SIGN = {"earn": 1, "earn_reversal": -1}


def _tier_rows(db: Db) -> list[tuple[str, datetime, int]]:
    """Every earn (+) and earn reversal (-) as (member, occurred_at, points)."""
    with transaction(db.sessions) as s:
        rows = s.execute(
            select(
                Transaction.member_id, Transaction.kind, Transaction.occurred_at, Transaction.points
            ).where(Transaction.kind.in_(tuple(_SIGN)))
        ).all()
    return [(member, at, _SIGN[kind] * points) for member, kind, at, points in rows]


def _recomputed(db: Db) -> dict[tuple[str, int], int]:
    days: dict[tuple[str, int], int] = defaultdict(int)
    for member, at, points in _tier_rows(db):
        days[(member, ledger.day_of(at))] += points
    return dict(days)


def _kept(db: Db) -> dict[tuple[str, int], int]:
    with transaction(db.sessions) as s:
        rows = s.execute(
            select(QualifyingDay.member_id, QualifyingDay.day, QualifyingDay.points)
        ).all()
    return {(member, day): points for member, day, points in rows}


def _history(db: Db) -> tuple[list[str], datetime]:
    """Earns and reversals of three members over several days: single earns, backdated
    ones, a bulk batch with its own times, and a partial reversal; the clock at the end."""
    shop = db.partner("EUR", earn="1")
    members = [db.member() for _ in range(3)]
    db.clock.advance(days=5)  # the card is in force for the backdated earns
    n = 0
    for day in range(4):
        for member in members:
            n += 1
            db.ops.earn(shop.id, member_id=member, reference=f"e{n}", amount="40", currency="EUR")
            db.ops.earn(
                shop.id,
                member_id=member,
                reference=f"b{n}",
                amount="7",
                currency="EUR",
                occurred_at=db.clock() - timedelta(days=2, hours=day),
            )
        db.clock.advance(hours=17)
    now = db.clock()
    batch = [
        EarnItem(members[k % 3], f"bulk{k}", "3.5", "EUR", now - timedelta(hours=5 * k))
        for k in range(30)
    ]
    assert all(not isinstance(r, Exception) for r in db.ops.earn_many(shop.id, batch))
    big = db.ops.earn(shop.id, member_id=members[0], reference="big", amount="900", currency="EUR")
    db.ops.reverse(shop.id, big.transaction.id, reference="r1", points=300)
    return members, db.clock()


def test_the_tier_basis_kept_per_day_equals_a_recomputation_from_the_transactions(
    db: Db,
) -> None:
    _history(db)
    assert _kept(db) == _recomputed(db)
    db.assert_ledger_ok()


def test_a_tier_window_counts_exactly_the_earns_and_reversals_inside_it(db: Db) -> None:
    members, now = _history(db)
    rows = _tier_rows(db)
    times = sorted({at for _, at, _ in rows})
    # Windows of every kind: from and until exactly at a transaction, a microsecond either
    # side, within one day, across days, the whole history, none of it.
    bounds = [*times[::5], times[-1], now]
    windows = [(since, until) for since in bounds for until in bounds if since <= until]
    windows += [(t + timedelta(microseconds=1), t) for t in times[:3]]  # empty: since > until
    windows += [(t - timedelta(microseconds=1), t + timedelta(microseconds=1)) for t in times]
    with transaction(db.sessions) as s:
        for member in members:
            for since, until in windows:
                expected = sum(p for m, at, p in rows if m == member and since <= at <= until)
                got = ledger.qualifying_points(s, member, since, until)
                assert got == expected, (member, since, until)


@pytest.mark.postgres
def test_concurrent_earns_and_an_import_keep_the_tier_basis_exact(pg: Db) -> None:
    shop = pg.partner("EUR", earn="1")
    members = [pg.member() for _ in range(8)]
    now = pg.clock.advance(days=2)  # the card is in force for the backdated earns

    def work(i: int) -> int:
        if i < 2:  # bulk batches over every member, with their own times
            done = 0
            for b in range(5):
                items = [
                    EarnItem(
                        members[k % len(members)],
                        f"t{i}-b{b}-{k}",
                        "2.25",
                        "EUR",
                        now - timedelta(hours=k % 30),
                    )
                    for k in range(120)
                ]
                done += sum(not isinstance(r, Exception) for r in pg.ops.earn_many(shop.id, items))
            return done
        for k in range(60):  # single earns of the same members
            pg.ops.earn(
                shop.id,
                member_id=members[(k + i) % len(members)],
                reference=f"t{i}-{k}",
                amount="5",
                currency="EUR",
            )
        return 60

    assert race(4, work) == [600, 600, 60, 60]
    assert _kept(pg) == _recomputed(pg)
    pg.assert_ledger_ok()


def test_coalition_check_reports_a_tier_basis_that_differs_from_the_transactions(
    lite: Db,
) -> None:
    shop = lite.partner("EUR", earn="1")
    member = lite.member()
    lite.ops.earn(shop.id, member_id=member, reference="e1", amount="10", currency="EUR")
    lite.assert_ledger_ok()
    with transaction(lite.sessions) as s:
        s.execute(update(QualifyingDay).values(points=QualifyingDay.points + 1))
    assert [v.split(":")[0] for v in lite.violations()[2]] == ["tier basis != its transactions"]
