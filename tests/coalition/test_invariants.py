"""The ledger invariants of docs/invariants.md, one group of tests per invariant.

Each invariant holds after real operations (on SQLite and PostgreSQL), and ``coalition check``
(the function and the ``coalition check --json`` command) reports a deliberate violation made
behind the ledger's back. The database itself refuses to edit the ledger or to write a
transfer of no points or from an account to itself.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from cli.main import main
from coalition.db import transaction
from coalition.ids import new_id
from coalition.ledger import Posted
from coalition.models import (
    OPERATOR_ACCOUNTS,
    Hold,
    Lot,
    LotMovement,
    Member,
    Transaction,
)
from partners.models import Partner
from settlement.reports import liability_at
from tests.conftest import Db

SECRET = base64.urlsafe_b64encode(b"s" * 32).decode().rstrip("=")


# --- a realistic ledger ----------------------------------------------------------------------


@dataclass
class Ledger:
    """What :func:`run_scenario` did: partners, members, and each change of liability."""

    grocer: Partner
    airline: Partner
    members: list[str]
    clawed_back: str
    active_hold: str
    changes: list[tuple[datetime, int]] = field(default_factory=list)


def run_scenario(db: Db) -> Ledger:
    """Earns in two currencies, burns, holds (captured, voided, expired, still active),
    reversals of both kinds, a clawback into a deficit, bonuses, adjustments and expiry."""
    db.configure(points_validity_days=30)
    grocer = db.partner("EUR", name="Grocer")
    airline = db.partner("JPY", earn="0.01", issue="1", burn="1", reimburse="0.8", name="Airline")
    ana, ben, cy = (db.ops.create_member()[0] for _ in range(3))
    changes: list[tuple[datetime, int]] = []

    def did(posted: Posted, sign: int) -> Posted:
        changes.append((posted.transaction.posted_at, sign * posted.transaction.points))
        return posted

    def earn(partner: Partner, member: str, reference: str, amount: str) -> Posted:
        return did(
            db.ops.earn(
                partner.id,
                member_id=member,
                reference=reference,
                amount=amount,
                currency=partner.currency,
            ),
            +1,
        )

    earn(grocer, ana, "g1", "500")
    earn(grocer, ben, "g2", "300")
    db.clock.advance(hours=1)
    earn(airline, cy, "a1", "20000")
    seat = did(db.ops.burn(airline.id, member_id=ana, reference="seat", points=200), -1)
    cart = db.ops.hold(grocer.id, member_id=ben, reference="cart", points=100)
    did(db.ops.capture(grocer.id, cart.hold.id, points=60), -1)
    voided = db.ops.hold(grocer.id, member_id=ben, reference="cart-2", points=30)
    db.ops.void(grocer.id, voided.hold.id)
    db.ops.hold(grocer.id, member_id=cy, reference="cart-3", points=20, expires_in=60)
    did(db.ops.reverse(airline.id, seat.transaction.id, reference="refund", points=50), +1)
    db.clock.advance(days=1)
    assert db.ops.expire_holds() == 1
    late = earn(grocer, cy, "g3", "100")
    did(db.ops.burn(grocer.id, member_id=cy, reference="spend", points=250), -1)
    clawback = did(db.ops.reverse(grocer.id, late.transaction.id, reference="refund-2"), -1)
    assert clawback.member.balance < 0 < clawback.transaction.overdraft_points
    did(db.ops.bonus(member_id=ben, points=40, reason="referral", funded_by=grocer.id), +1)
    did(db.ops.bonus(member_id=ana, points=25, reason="sign-up", funded_by="coalition"), +1)
    did(db.ops.adjust(member_id=ben, points=-10, reason="correction"), -1)
    did(db.ops.adjust(member_id=ana, points=15, reason="goodwill"), +1)
    db.clock.advance(days=28, hours=22)
    kept = db.ops.hold(grocer.id, member_id=ana, reference="cart-4", points=50, expires_in=86400)
    db.clock.advance(hours=1)  # the first lots are now past their date
    assert db.ops.expire_points() >= 1
    with db.sessions() as s:
        for posted_at, points in s.execute(
            select(Transaction.posted_at, Transaction.points).where(Transaction.kind == "expiry")
        ):
            changes.append((posted_at, -points))
    return Ledger(grocer, airline, [ana, ben, cy], cy, kept.hold.id, changes)


# --- running coalition check -----------------------------------------------------------------


@dataclass
class CheckRun:
    exit_code: int
    report: dict[str, Any]

    def invariant(self, number: int) -> dict[str, Any]:
        found: list[dict[str, Any]] = [
            i for i in self.report["invariants"] if i["invariant"] == number
        ]
        assert len(found) == 1
        return found[0]

    def broken(self) -> set[int]:
        return {i["invariant"] for i in self.report["invariants"] if not i["ok"]}


@pytest.fixture
def coalition_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> Callable[[Db], CheckRun]:
    """Run ``coalition check --json`` against a test database."""
    monkeypatch.chdir(tmp_path)  # no coalition.toml, no development key file here
    monkeypatch.setenv("COALITION_SECRET_KEY", SECRET)

    def run(db: Db) -> CheckRun:
        monkeypatch.setenv("COALITION_DATABASE_URL", db.url)
        capsys.readouterr()
        code = main(["check", "--json"])
        return CheckRun(code, json.loads(capsys.readouterr().out))

    return run


def assert_reported(db: Db, check: CheckRun, invariant: int, *needles: str) -> None:
    """The invariant is reported broken by the function and the command, naming ``needles``."""
    violations = db.violations()
    assert invariant in violations
    text_found = "\n".join(violations[invariant])
    for needle in needles:
        assert needle in text_found
    assert check.exit_code == 1
    assert check.report["ok"] is False
    reported = check.invariant(invariant)
    assert reported["ok"] is False
    assert reported["violations"] == violations[invariant]


def drop_sqlite_trigger(db: Db, name: str) -> None:
    assert db.backend == "sqlite"
    with transaction(db.sessions) as s:
        s.execute(text(f"DROP TRIGGER {name}"))


def member_account(s: Session, member_id: str) -> int:
    account = s.scalar(select(Member.account_id).where(Member.id == member_id))
    assert account is not None
    return account


# --- 1. every transfer moves positive points between two accounts of its kind --------------


def test_invariant_1_transfers_balance_every_account_after_real_operations(
    db: Db, coalition_check: Callable[[Db], CheckRun]
) -> None:
    ledger = run_scenario(db)
    with db.sessions() as s:
        transfers = s.execute(
            select(Transaction.debit_account_id, Transaction.credit_account_id, Transaction.points)
        ).all()
        for member in ledger.members:
            account = member_account(s, member)
            balance = s.scalar(select(Member.balance).where(Member.id == member))
            credits = sum(p for _, credit, p in transfers if credit == account)
            debits = sum(p for debit, _, p in transfers if debit == account)
            assert balance == credits - debits, member
    assert len(transfers) >= 15
    assert all(points > 0 and debit != credit for debit, credit, points in transfers)

    check = coalition_check(db)
    assert (check.exit_code, check.report["ok"], check.broken()) == (0, True, set())


def test_invariant_1_check_reports_a_transfer_between_the_wrong_accounts(
    lite: Db, coalition_check: Callable[[Db], CheckRun]
) -> None:
    ledger = run_scenario(lite)
    with lite.sessions() as s:
        txn_id = s.scalars(select(Transaction.id).where(Transaction.kind == "earn")).first()
    assert txn_id is not None
    edit = text("UPDATE transactions SET debit_account_id = :account WHERE id = :id")
    params = {"id": txn_id, "account": ledger.grocer.redeemed_account_id}
    with pytest.raises(DBAPIError, match="append-only"), transaction(lite.sessions) as s:
        s.execute(edit, params)
    drop_sqlite_trigger(lite, "transactions_append_only_update")
    with transaction(lite.sessions) as s:
        s.execute(edit, params)

    check = coalition_check(lite)
    assert check.broken() == {1}
    assert_reported(lite, check, 1, "transfer not between its kind's accounts", txn_id)


def test_invariant_1_check_reports_a_reference_to_a_partner_that_does_not_exist(
    db: Db, coalition_check: Callable[[Db], CheckRun]
) -> None:
    # The ledger's hot tables have no foreign key to the partner (a row lock per insert on
    # the partner's row, docs/invariants.md): the check verifies the reference instead.
    ledger = run_scenario(db)
    with transaction(db.sessions) as s:
        s.execute(
            text("UPDATE holds SET partner_id = 'prt_gone' WHERE id = :id"),
            {"id": ledger.active_hold},
        )

    check = coalition_check(db)
    assert 1 in check.broken()
    assert_reported(db, check, 1, "reference to no row", ledger.active_hold)


def test_invariant_1_the_database_refuses_to_edit_or_delete_the_ledger(db: Db) -> None:
    shop = db.partner("EUR")
    member = db.member(100, shop)
    db.ops.burn(shop.id, member_id=member, reference="b", points=40)
    for table, column in [
        ("transactions", "points"),
        ("lot_movements", "points"),
        ("rate_cards", "earn_points_per_unit"),
    ]:
        statements = [f"UPDATE {table} SET {column} = {column}", f"DELETE FROM {table}"]
        if db.backend == "postgres":
            statements.append(f"TRUNCATE {table} CASCADE")
        for statement in statements:
            with pytest.raises(DBAPIError, match="append-only"), transaction(db.sessions) as s:
                s.execute(text(statement))
    db.assert_ledger_ok()


def test_invariant_1_the_database_refuses_a_transfer_of_no_points_or_to_its_own_account(
    db: Db,
) -> None:
    shop = db.partner("EUR")
    member = db.member(100, shop)
    now = db.clock.now
    with db.sessions() as s:
        account = member_account(s, member)

    def bonus(points: int, debit: int) -> None:
        with transaction(db.sessions) as s:
            s.execute(
                insert(Transaction).values(
                    id=new_id("txn"),
                    kind="bonus",
                    member_id=member,
                    points=points,
                    occurred_at=now,
                    posted_at=now,
                    balance_after=100,
                    overdraft_points=0,
                    debit_account_id=debit,
                    credit_account_id=account,
                )
            )

    with pytest.raises(DBAPIError, match=r"two_accounts|two accounts"):
        bonus(5, account)
    with pytest.raises(IntegrityError, match=r"points_positive|CHECK constraint failed"):
        bonus(0, OPERATOR_ACCOUNTS["operator_bonus"])
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Transaction)) == 1
    db.assert_ledger_ok()


# --- 2. a member's balance is the sum of its open lots ------------------------------------------


def test_invariant_2_balance_equals_open_lots_after_real_operations(
    db: Db, coalition_check: Callable[[Db], CheckRun]
) -> None:
    ledger = run_scenario(db)
    with db.sessions() as s:
        for member in ledger.members:
            balance = s.scalar(select(Member.balance).where(Member.id == member))
            lots = s.scalar(select(func.sum(Lot.remaining)).where(Lot.member_id == member))
            assert balance == lots, member
        negative = s.execute(select(Member.id, Member.balance).where(Member.balance < 0)).all()
        clawbacks = s.scalars(
            select(Transaction.member_id).where(Transaction.overdraft_points > 0)
        ).all()
    # The one negative member is the one whose spent points were clawed back, on record.
    assert [m for m, _ in negative] == [ledger.clawed_back] == list(clawbacks)
    check = coalition_check(db)
    assert (check.exit_code, check.invariant(2)["ok"]) == (0, True)


def test_invariant_2_check_reports_a_balance_changed_behind_the_ledgers_back(
    lite: Db, coalition_check: Callable[[Db], CheckRun]
) -> None:
    ledger = run_scenario(lite)
    victim = ledger.members[1]
    with transaction(lite.sessions) as s:
        s.execute(text("UPDATE members SET balance = balance + 7 WHERE id = :id"), {"id": victim})

    check = coalition_check(lite)
    assert_reported(lite, check, 2, "balance != open lots", victim)
    assert_reported(lite, check, 1, "member balance != its credits less its debits", victim)


def test_invariant_2_check_reports_a_lot_changed_without_a_movement(
    lite: Db, coalition_check: Callable[[Db], CheckRun]
) -> None:
    ledger = run_scenario(lite)
    with lite.sessions() as s:
        lot_id = s.scalar(
            select(Lot.id).where(Lot.member_id == ledger.members[0], Lot.remaining > 1).limit(1)
        )
    with transaction(lite.sessions) as s:
        s.execute(text("UPDATE lots SET remaining = remaining - 1 WHERE id = :id"), {"id": lot_id})

    assert_reported(
        lite,
        coalition_check(lite),
        2,
        f"lot remaining != points + movements: lot_id={lot_id}",
        "balance != open lots",
    )


def test_invariant_2_check_reports_a_negative_balance_without_a_clawback(
    lite: Db, coalition_check: Callable[[Db], CheckRun]
) -> None:
    run_scenario(lite)
    nobody = lite.ops.create_member()[0]
    with transaction(lite.sessions) as s:
        s.execute(text("UPDATE members SET balance = -5 WHERE id = :id"), {"id": nobody})

    assert_reported(
        lite, coalition_check(lite), 2, "negative balance without a recorded clawback", nobody
    )


def test_invariant_2_check_reports_a_deficit_beside_open_lots(
    lite: Db, coalition_check: Callable[[Db], CheckRun]
) -> None:
    ledger = run_scenario(lite)
    member = ledger.members[0]  # has open lots and no deficit
    with transaction(lite.sessions) as s:
        txn_id = s.scalar(select(Transaction.id).where(Transaction.member_id == member).limit(1))
        lot_id = s.scalar(
            insert(Lot)
            .values(
                member_id=member,
                origin_partner_id=None,
                transaction_id=txn_id,
                points=0,
                remaining=-5,
                expires_at=None,
                is_deficit=True,
            )
            .returning(Lot.id)
        )
        s.execute(
            insert(LotMovement).values(
                transaction_id=txn_id, lot_id=lot_id, origin_partner_id=None, points=-5
            )
        )

    assert_reported(lite, coalition_check(lite), 2, "deficit beside open lots", member)


# --- 3. held points never exceed the balance; available = balance - held ----------------------


def test_invariant_3_held_points_are_the_active_holds_after_real_operations(
    db: Db, coalition_check: Callable[[Db], CheckRun]
) -> None:
    ledger = run_scenario(db)
    states: dict[str, int] = {}
    with db.sessions() as s:
        for member in ledger.members:
            balance, held = s.execute(
                select(Member.balance, Member.held).where(Member.id == member)
            ).one()
            active = s.scalar(
                select(func.coalesce(func.sum(Hold.points), 0)).where(
                    Hold.member_id == member, Hold.status == "active"
                )
            )
            assert held == active
            assert held <= balance or member == ledger.clawed_back
            states[member] = balance - held
        statuses = dict(s.execute(select(Hold.reference, Hold.status)).all())
    assert {m: db.ops.balance(m).available for m in ledger.members} == states
    assert statuses == {
        "cart": "captured",
        "cart-2": "voided",
        "cart-3": "expired",
        "cart-4": "active",
    }
    check = coalition_check(db)
    assert (check.exit_code, check.invariant(3)["ok"]) == (0, True)


def test_invariant_3_check_reports_held_points_without_a_hold(
    lite: Db, coalition_check: Callable[[Db], CheckRun]
) -> None:
    ledger = run_scenario(lite)
    member = ledger.members[1]
    with transaction(lite.sessions) as s:
        s.execute(text("UPDATE members SET held = held + 10 WHERE id = :id"), {"id": member})

    assert_reported(lite, coalition_check(lite), 3, "held != active holds", member)


def test_invariant_3_check_reports_a_hold_closed_without_releasing_its_points(
    lite: Db, coalition_check: Callable[[Db], CheckRun]
) -> None:
    ledger = run_scenario(lite)
    with transaction(lite.sessions) as s:
        s.execute(
            text("UPDATE holds SET status = 'voided' WHERE id = :id"), {"id": ledger.active_hold}
        )

    assert_reported(lite, coalition_check(lite), 3, "held != active holds", ledger.members[0])


def test_invariant_3_check_reports_more_held_than_the_balance(
    lite: Db, coalition_check: Callable[[Db], CheckRun]
) -> None:
    ledger = run_scenario(lite)
    member = ledger.members[1]
    with transaction(lite.sessions) as s:
        balance = s.scalar(select(Member.balance).where(Member.id == member))
        assert balance is not None and balance > 0
        s.execute(
            insert(Hold).values(
                id=new_id("hold"),
                partner_id=ledger.grocer.id,
                member_id=member,
                reference="forged",
                points=balance + 1,
                status="active",
                expires_at=lite.clock.now + timedelta(hours=1),
                created_at=lite.clock.now,
            )
        )
        s.execute(
            text("UPDATE members SET held = held + :p WHERE id = :id"),
            {"p": balance + 1, "id": member},
        )

    check = coalition_check(lite)
    assert_reported(lite, check, 3, "held exceeds balance", member)
    assert not any("held != active holds" in v for v in check.invariant(3)["violations"])


def test_invariant_3_check_reports_a_capture_without_its_burn(
    lite: Db, coalition_check: Callable[[Db], CheckRun]
) -> None:
    ledger = run_scenario(lite)
    with transaction(lite.sessions) as s:
        points = s.scalar(select(Hold.points).where(Hold.id == ledger.active_hold))
        s.execute(
            text("UPDATE holds SET status = 'captured', captured_points = points WHERE id = :id"),
            {"id": ledger.active_hold},
        )
        s.execute(
            text("UPDATE members SET held = held - :p WHERE id = :id"),
            {"p": points, "id": ledger.members[0]},
        )

    assert_reported(
        lite, coalition_check(lite), 3, "capture does not match its burn", ledger.active_hold
    )


# --- 4. outstanding liability balances at any point in time ----------------------------------


def test_invariant_4_liability_adds_up_at_every_moment_after_real_operations(
    db: Db, coalition_check: Callable[[Db], CheckRun]
) -> None:
    ledger = run_scenario(db)
    moments = sorted({at for at, _ in ledger.changes})
    probes = [moments[0] - timedelta(seconds=1), *moments, moments[-1] + timedelta(days=1)]
    probes += [a + (b - a) / 2 for a, b in itertools.pairwise(moments)]
    with db.sessions() as s:
        for at in probes:
            expected = sum(points for when, points in ledger.changes if when <= at)
            assert liability_at(s, at) == expected, at
        assert liability_at(s, db.clock.now) == s.scalar(select(func.sum(Member.balance)))
    check = coalition_check(db)
    assert (check.exit_code, check.invariant(4)["ok"]) == (0, True)


def test_invariant_4_check_reports_a_liability_that_does_not_add_up(
    lite: Db, coalition_check: Callable[[Db], CheckRun]
) -> None:
    ledger = run_scenario(lite)
    # A bonus that never reached a member: by its kind it added to the members' points, by
    # the accounts it moved it did not (and invariant 1 sees a transfer of the wrong roles).
    txn_id = new_id("txn")
    at = lite.clock.now
    with transaction(lite.sessions) as s:
        s.execute(
            insert(Transaction).values(
                id=txn_id,
                kind="bonus",
                member_id=ledger.members[0],
                points=10,
                occurred_at=at,
                posted_at=at,
                balance_after=0,
                overdraft_points=0,
                debit_account_id=OPERATOR_ACCOUNTS["operator_bonus"],
                credit_account_id=OPERATOR_ACCOUNTS["operator_adjustment"],
            )
        )

    check = coalition_check(lite)
    assert check.broken() == {1, 4}
    assert_reported(lite, check, 4, "by account")


def test_check_prints_a_readable_report(
    lite: Db, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ledger = run_scenario(lite)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COALITION_SECRET_KEY", SECRET)
    monkeypatch.setenv("COALITION_DATABASE_URL", lite.url)
    assert main(["check"]) == 0
    assert "all invariants hold" in capsys.readouterr().out

    with transaction(lite.sessions) as s:
        s.execute(
            text("UPDATE members SET held = held + 1 WHERE id = :id"), {"id": ledger.members[2]}
        )
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "[VIOLATED] 3." in out and ledger.members[2] in out and "INVARIANTS VIOLATED" in out
