"""Backups that restore: a base backup of a WAL-archiving primary, then traffic and two period
closes; a point-in-time restore to a moment between the closes gives a database on which
``coalition check`` is clean, every statement of the first close is there and verifies with its
original hash and signature, and the second close never happened (docs/operations.md, "Point-in-
time restore" is the procedure this test follows).

The primary and the restored server are clusters of their own on free loopback ports
(tests/pgservers.py); the archive is a temporary directory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cli.main import main
from coalition.db import make_engine, migrate, session_factory, transaction
from coalition.models import Transaction
from partners.models import Partner
from settlement.canonical import canonical_json, content_sha256, verify_document
from settlement.models import Period, Statement
from settlement.signing import public_keys
from settlement.statements import document_of
from tests import pgservers
from tests.conftest import Db
from tests.pgservers import PgServers, wait_until
from tests.settlement.helpers import close_at, ref

DATABASE = "coalition"


@pytest.fixture(scope="module")
def servers() -> Iterator[PgServers]:
    pgservers.require(pgservers.available(), "PostgreSQL 15's server programs")
    with PgServers() as made:
        yield made


def _archive(servers: PgServers) -> Path:
    archive = servers.base / "archive"
    archive.mkdir(mode=0o700)
    if os.geteuid() == 0:
        shutil.chown(archive, pgservers.SUPERUSER, pgservers.SUPERUSER)
    return archive


def _traffic(db: Db, partners: list[Partner], members: list[str], rounds: int) -> None:
    for n in range(rounds):
        for partner in partners:
            member = members[n % len(members)]
            db.ops.earn(
                partner.id,
                member_id=member,
                reference=ref("pitr"),
                amount=str(100 + n),
                currency=partner.currency,
            )
            db.ops.burn(partner.id, member_id=member, reference=ref("pitr"), points=3)


def test_a_point_in_time_restore_between_two_closes_keeps_the_first_and_checks_clean(
    servers: PgServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _archive(servers)
    primary = servers.primary(
        "archiving",
        settings={
            "archive_mode": "on",
            "archive_command": f"test ! -f {archive}/%f && cp %p {archive}/%f",
        },
    )
    url = primary.create_database(DATABASE)
    engine = make_engine(url)
    try:
        migrate(engine)
        db = Db(engine, session_factory(engine), "postgres")
        backup = servers.base_backup(primary, "base_backup")

        partners = [db.partner("EUR", name="Grocer"), db.partner("JPY", name="Fuel")]
        members = [db.member() for _ in range(3)]
        _traffic(db, partners, members, rounds=4)
        db.clock.advance(hours=1)
        first = close_at(db, db.clock() - timedelta(minutes=1))
        assert first.created and len(first.statements) == 2
        with transaction(db.sessions) as s:
            issued = {
                st.id: (st.issued_sha256, st.content_sha256, st.signature)
                for st in s.scalars(select(Statement))
            }
            transactions = s.scalar(select(func.count()).select_from(Transaction))
        # the restore target: after the first close committed, before anything that follows
        target = datetime.now(UTC)
        wait_until(lambda: datetime.now(UTC) > target, 5, "the clock to pass the target")

        _traffic(db, partners, members, rounds=3)
        db.clock.advance(hours=1)
        second = close_at(db, db.clock() - timedelta(minutes=1))
        assert second.created and len(second.statements) == 2
    finally:
        engine.dispose()
    # every WAL segment up to the second close archived
    segment = primary.value("SELECT pg_walfile_name(pg_current_wal_lsn())")
    primary.execute("SELECT pg_switch_wal()")
    wait_until((archive / segment).is_file, 60, f"WAL segment {segment} to be archived")

    restored = servers.restore(
        backup.datadir,
        "restored",
        settings={
            "restore_command": f"cp {archive}/%f %p",
            "recovery_target_time": target.isoformat(),
            "recovery_target_action": "promote",
            # the restored copy archives nothing into the primary's archive
            "archive_mode": "off",
        },
    )
    wait_until(lambda: not restored.in_recovery(), 60, "the restore to reach its target")

    restored_url = restored.url(DATABASE)
    monkeypatch.setenv("COALITION_DATABASE_URL", restored_url)
    monkeypatch.setenv("COALITION_SECRET_KEY", "a" * 43)
    assert main(["check"]) == 0, "coalition check on the restored database"

    engine = make_engine(restored_url)
    try:
        with transaction(session_factory(engine)) as s:
            assert s.scalars(select(Period.id)).all() == [first.period.id]
            assert s.scalar(select(func.count()).select_from(Transaction)) == transactions
            keys = {k.kid: k.public_key for k in public_keys(s)}
            statements = s.scalars(select(Statement)).all()
            assert {st.id for st in statements} == set(issued)
            for st in statements:
                assert (st.issued_sha256, st.content_sha256, st.signature) == issued[st.id]
                document = document_of(st)
                assert content_sha256(canonical_json(document)) == issued[st.id][1]
                assert (
                    content_sha256(canonical_json({**document, "status": "issued"}))
                    == (issued[st.id][0])
                )
                assert verify_document(document, keys).ok
    finally:
        engine.dispose()
