"""The tier basis kept on the member row (``coalition.ledger.tiers``): whatever writes the
earns and reversals (one by one, in bulk, side by side), it equals a recomputation from the
transactions, and a tier read from it, in SQL or in Python, counts exactly the transactions of
the W days ending with the day asked about."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

import pytest
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from coalition import ledger
from coalition.db import transaction
from coalition.ledger import tiers
from coalition.models import Member, Transaction
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


def _recomputed(db: Db) -> dict[str, tuple[int | None, int | None, int]]:
    """Each member's basis as the rule defines it: its latest day, and the points of the W
    days ending there."""
    w = db.settings.tier_window_days
    days: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for member, at, points in _tier_rows(db):
        days[member][ledger.day_of(at)] += points
    basis: dict[str, tuple[int | None, int | None, int]] = {}
    for member in _kept(db):
        if not days[member]:
            basis[member] = (None, None, 0)
            continue
        last = max(days[member])
        basis[member] = (
            last,
            last - w + 1,
            sum(p for d, p in days[member].items() if d > last - w),
        )
    return basis


def _kept(db: Db) -> dict[str, tuple[int | None, int | None, int]]:
    with transaction(db.sessions) as s:
        rows = s.execute(
            select(Member.id, Member.tier_day, Member.tier_since_day, Member.tier_points)
        ).all()
    return {member: (day, since, points) for member, day, since, points in rows}


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


def test_the_tier_basis_kept_on_the_member_row_equals_a_recomputation_from_the_transactions(
    db: Db,
) -> None:
    _history(db)
    assert _kept(db) == _recomputed(db)
    db.assert_ledger_ok()


def _tier_read(s: Session, member: str, day: int, w: int) -> int:
    params = {"member": member, **ledger.tier_params(day, w)}
    return int(s.scalar(select(ledger.MEMBER_TIER_POINTS), params) or 0)


@pytest.mark.parametrize("window_days", [1, 3, 365])
def test_a_tier_read_counts_exactly_the_earns_and_reversals_of_its_days(
    db: Db, window_days: int
) -> None:
    db.configure(tier_window_days=window_days)
    members, now = _history(db)
    rows = _tier_rows(db)
    first, last = ledger.day_of(min(at for _, at, _ in rows)), ledger.day_of(now)
    kept = _kept(db)
    with transaction(db.sessions) as s:
        for member in members:
            basis = ledger.TierBasis(*kept[member])
            # Days before the basis's day (backdated), on it, after it, and past the window.
            for day in range(first - 2, last + window_days + 3):
                expected = sum(
                    p
                    for m, at, p in rows
                    if m == member and day - window_days < ledger.day_of(at) <= day
                )
                assert ledger.qualifying_points(s, member, day, window_days) == expected
                assert _tier_read(s, member, day, window_days) == expected, (member, day)
                days = {
                    d: sum(p for m, at, p in rows if m == member and ledger.day_of(at) == d)
                    for lo, hi in basis.reads(day, window_days)
                    for d in range(lo, hi + 1)
                }
                assert basis.at(day, window_days, days) == expected, (member, day)


def test_the_basis_after_a_transfer_is_the_same_in_sql_and_in_python(db: Db) -> None:
    # The one declaration of the rule, evaluated as SQL against each member row (what the
    # one-statement credit writes) and as Python (what ledger.post writes), for days before,
    # on and after each row's day, windows of the row's width and others, transfers adding
    # and taking away; where the SQL says the write reads no transaction, it needs none.
    members, now = _history(db)
    rows = _tier_rows(db)
    kept = _kept(db)
    first, last = ledger.day_of(min(at for _, at, _ in rows)), ledger.day_of(now)
    after_sql = select(
        *tiers.tier_values().values(), tiers.TIER_WRITE_WITHOUT_READ.label("without_read")
    ).where(Member.id == bindparam("member"))
    with transaction(db.sessions) as s:
        for member in members:
            basis = ledger.TierBasis(*kept[member])
            per_day: dict[int, int] = defaultdict(int)
            for m, at, points in rows:
                if m == member:
                    per_day[ledger.day_of(at)] += points
            for w in (1, 3, 365):
                for day in [*range(first - 2, last + 4), last + w - 1, last + w, last + w + 1]:
                    for signed in (0, 40, -15):
                        params = {"member": member, **ledger.tier_params(day, w, signed)}
                        *written, without_read = s.execute(after_sql, params).one()
                        python = basis.after(day, signed, w, per_day)
                        assert tuple(written) == (python.day, python.since_day, python.points)
                        if without_read:
                            assert basis.after(day, signed, w, {}) == python


def test_a_window_setting_changed_reads_right_and_the_next_earn_rebases(lite: Db) -> None:
    shop = lite.partner("EUR", earn="1")
    member = lite.member()
    for n in range(4):
        lite.ops.earn(shop.id, member_id=member, reference=f"e{n}", amount="100", currency="EUR")
        lite.clock.advance(days=1)
    lite.configure(tier_window_days=2)  # the row's window is 365 days wide
    assert lite.ops.balance(member).qualifying_points == 100  # yesterday's; today has none
    lite.ops.earn(shop.id, member_id=member, reference="e4", amount="100", currency="EUR")
    assert _kept(lite) == _recomputed(lite)
    lite.assert_ledger_ok()


@pytest.mark.postgres
@pytest.mark.parametrize("window_days", [1, 365])
def test_concurrent_earns_and_an_import_keep_the_tier_basis_exact(pg: Db, window_days: int) -> None:
    pg.configure(tier_window_days=window_days)  # 1: the earns of a new day roll the window
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
        s.execute(update(Member).values(tier_points=Member.tier_points + 1))
    assert [v.split(":")[0] for v in lite.violations()[2]] == ["tier basis != its transactions"]
