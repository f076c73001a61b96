"""Migration 0015_transfers on a database that holds a ledger: down to the postings of 0014
and up again to transfers, on a database filled by the demo and on one filled by the import,
on both backends. Every transfer, balance, lot and statement comes back exactly as it was,
``coalition check`` finds nothing, and an upgrade that would not balance is refused whole."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text

from api.bulk import earn_from_fields, earn_from_json
from cli.demo import demo
from coalition.db import _alembic_config, transaction
from partners.imports import import_earns
from tests.conftest import Db

BEFORE = "0014_payments"


def _state(db: Db) -> dict[str, Any]:
    """What the migration must keep: every transfer, member, lot and statement."""
    queries = {
        "transfers": "SELECT id, kind, points, debit_account_id, credit_account_id, posted_at"
        " FROM transactions ORDER BY id",
        "members": "SELECT id, account_id, balance, held FROM members ORDER BY id",
        "lots": "SELECT id, member_id, points, remaining FROM lots ORDER BY id",
        "statements": "SELECT id, content_sha256, issued_sha256, document FROM statements"
        " ORDER BY id",
    }
    with db.engine.connect() as conn:
        return {name: conn.execute(text(sql)).all() for name, sql in queries.items()}


def _postings(db: Db) -> Sequence[Any]:
    with db.engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT transaction_id, COUNT(*), SUM(points), MIN(points) FROM postings"
                " GROUP BY transaction_id ORDER BY transaction_id"
            )
        ).all()


def _down_and_up(db: Db) -> None:
    before = _state(db)
    transfers = before["transfers"]
    config = _alembic_config(db.engine)
    command.downgrade(config, BEFORE)
    legs = _postings(db)
    # Down: two legs per transfer, -points and +points.
    assert [(t, n, total, low) for t, n, total, low in legs] == [
        (t.id, 2, 0, -t.points) for t in transfers
    ]
    command.upgrade(config, "head")
    assert _state(db) == before
    db.assert_ledger_ok()


def test_a_demo_ledger_goes_to_postings_and_back_to_the_same_transfers(
    db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the demo writes its exports and keys where it runs
    done = demo(db.settings, db.engine, db.sessions, seed=3, members=12, echo=lambda _: None)
    assert done is not None and done.invariants_ok
    state = _state(db)
    assert len(state["transfers"]) > 100 and state["statements"]
    _down_and_up(db)


def test_an_imported_ledger_goes_to_postings_and_back_to_the_same_transfers(
    db: Db, tmp_path: Path
) -> None:
    partner = db.partner("EUR")
    members = [db.member() for _ in range(5)]
    path = tmp_path / "earns.csv"
    rows = [f"{members[n % 5]},ref-{n},{n % 40 + 1}.25,EUR," for n in range(300)]
    path.write_text("member_id,reference,amount,currency,occurred_at\n" + "\n".join(rows) + "\n")
    summary = import_earns(
        db.ops,
        partner.id,
        path,
        "csv",
        to_item=earn_from_fields,
        from_json=earn_from_json,
        batch_rows=64,
    )
    assert summary.imported == 300
    _down_and_up(db)


def test_the_upgrade_refuses_a_transaction_that_is_not_two_opposite_legs(pg: Db) -> None:
    shop = pg.partner("EUR")
    pg.member(100, shop)
    config = _alembic_config(pg.engine)
    command.downgrade(config, BEFORE)
    with transaction(pg.sessions) as s:
        txn, account = s.execute(
            text("SELECT transaction_id, account_id FROM postings WHERE points > 0 LIMIT 1")
        ).one()
        s.execute(
            text(
                "INSERT INTO postings (transaction_id, account_id, points, posted_at)"
                " SELECT :txn, :account, 5, now() UNION ALL SELECT :txn, 1, -5, now()"
            ),
            {"txn": txn, "account": account},
        )
    with pytest.raises(RuntimeError, match="without exactly two opposite legs"):
        command.upgrade(config, "head")
    with pg.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == BEFORE
        assert conn.execute(text("SELECT count(*) FROM postings")).scalar() == 4
