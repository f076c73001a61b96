"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData

from coalition.db import Base, make_engine, migrate, schema_is_current
from tests.conftest import Db


def target_metadata() -> MetaData:
    """The metadata the migrations are meant to build: every table any module of the layers
    that hold tables declares (each registers on ``Base.metadata`` when its module is
    imported; the migrations' own modules aside)."""
    for package in ("coalition", "partners", "settlement"):
        root = importlib.import_module(package)
        for module in pkgutil.walk_packages(root.__path__, f"{package}."):
            if not module.name.startswith("coalition.migrations"):
                importlib.import_module(module.name)
    return Base.metadata


def test_the_migrated_schema_matches_the_models(db: Db) -> None:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, target_metadata())
    assert differences == []


def test_migrating_a_new_database_reaches_the_newest_revision_and_is_repeatable(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fresh.sqlite3'}")
    try:
        assert not schema_is_current(engine)
        before, head = migrate(engine)
        assert before is None
        assert schema_is_current(engine)
        assert migrate(engine) == (head, head)
    finally:
        engine.dispose()
