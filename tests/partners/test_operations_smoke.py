from __future__ import annotations

from coalition.check import run_checks
from coalition.db import transaction
from tests.conftest import Db


def test_earn_burn_hold_reverse_keep_invariants(db: Db) -> None:
    grocer = db.partner("EUR")
    airline = db.partner("JPY", earn="0.01", issue="1", burn="1", reimburse="0.8")
    m = db.member(100, grocer)
    burn = db.ops.burn(airline.id, member_id=m, reference="b1", points=30)
    assert burn.member.available == 70
    h = db.ops.hold(airline.id, member_id=m, reference="h1", points=50)
    assert h.member.available == 20
    cap = db.ops.capture(airline.id, h.hold.id, points=40)
    assert cap.member.balance == 30 and cap.member.held == 0
    rev = db.ops.reverse(airline.id, burn.transaction.id, reference="r1", points=10)
    assert rev.member.balance == 40
    earn = db.ops.earn(grocer.id, member_id=m, reference="e2", amount="5.00", currency="EUR")
    db.ops.burn(grocer.id, member_id=m, reference="b2", points=45)
    clawback = db.ops.reverse(grocer.id, earn.transaction.id, reference="r2")
    assert clawback.member.balance == -5
    assert clawback.transaction.overdraft_points == 5
    db.ops.earn(grocer.id, member_id=m, reference="e3", amount="20", currency="EUR")
    db.clock.advance(days=2000)
    assert db.ops.expire_points() == 1
    with transaction(db.sessions) as s:
        findings = run_checks(s)
    assert all(f.ok for f in findings), [f.violations for f in findings]
