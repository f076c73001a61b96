"""Migration 0005_security on a database that already holds data: the members it holds stay,
ids up to 68 characters fit afterwards, and it goes down and up again, on both backends."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from coalition.db import _alembic_config, transaction
from coalition.ledger import create_member, member_state
from partners.operations import Operations
from tests.conftest import Db

LONG = "mem_" + "z" * 64


def test_upgrading_a_database_with_members_keeps_them_and_fits_long_ids(db: Db) -> None:
    command.downgrade(_alembic_config(db.engine), "0003")
    with transaction(db.sessions) as s:
        create_member(s, "mem_before", db.clock())
    command.upgrade(_alembic_config(db.engine), "head")
    if db.backend == "sqlite":
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    ops: Operations = db.ops
    assert ops.create_member(LONG) == (LONG, True)
    with transaction(db.sessions) as s:
        assert member_state(s, "mem_before").balance == 0
        assert member_state(s, LONG).balance == 0
        columns = s.execute(text("SELECT count(*) FROM members")).scalar_one()
    assert columns == 2
