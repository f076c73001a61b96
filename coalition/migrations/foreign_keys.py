"""Dropping (and, in a downgrade, adding back) foreign keys, for the revisions that decide a
key costs more than it guards (docs/invariants.md, "Foreign keys").

PostgreSQL drops a constraint by name. SQLite has no ``DROP CONSTRAINT``: its table
definitions lose (or regain) the clause in place, the way SQLite documents for removing a
foreign key (``writable_schema``, the schema version bumped, an integrity check after).
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

#: A foreign key as a revision names it: (table, constraint, column, parent table).
Key = tuple[str, str, str, str]


def _clause(name: str, column: str, parent: str, cascade: frozenset[str]) -> str:
    action = " ON DELETE CASCADE" if name in cascade else ""
    return f"CONSTRAINT {name} FOREIGN KEY({column}) REFERENCES {parent} (id){action}"


def _sqlite(keys: tuple[Key, ...], *, drop: bool, cascade: frozenset[str]) -> None:
    conn = op.get_bind()
    version = int(conn.exec_driver_sql("PRAGMA schema_version").scalar_one())
    conn.exec_driver_sql("PRAGMA writable_schema=ON")
    for table in dict.fromkeys(table for table, *_ in keys):
        sql = conn.execute(
            sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t"),
            {"t": table},
        ).scalar_one()
        for _, name, column, parent in (key for key in keys if key[0] == table):
            clause = _clause(name, column, parent, cascade)
            if drop:
                sql, found = re.subn(r",\s*" + re.escape(clause), "", sql)
                if found != 1:
                    raise RuntimeError(f"{table} has no foreign key {name}")
            else:
                end = sql.rstrip().rindex(")")
                sql = f"{sql[:end].rstrip()}, \n\t{clause}\n)"
        conn.execute(
            sa.text("UPDATE sqlite_master SET sql = :sql WHERE type = 'table' AND name = :t"),
            {"sql": sql, "t": table},
        )
    conn.exec_driver_sql(f"PRAGMA schema_version={version + 1}")
    conn.exec_driver_sql("PRAGMA writable_schema=OFF")
    if conn.exec_driver_sql("PRAGMA integrity_check").scalar_one() != "ok":
        raise RuntimeError("SQLite's integrity check failed after editing foreign keys")


def drop(keys: tuple[Key, ...], *, cascade: frozenset[str] = frozenset()) -> None:
    """Drop ``keys`` (``cascade``: the names of those declared ``ON DELETE CASCADE``)."""
    if op.get_bind().dialect.name == "sqlite":
        _sqlite(keys, drop=True, cascade=cascade)
        return
    for table, name, _, _ in keys:
        op.drop_constraint(name, table, type_="foreignkey")


def add(keys: tuple[Key, ...], *, cascade: frozenset[str] = frozenset()) -> None:
    """Add ``keys`` back (a downgrade; ``cascade`` as for :func:`drop`)."""
    if op.get_bind().dialect.name == "sqlite":
        _sqlite(keys, drop=False, cascade=cascade)
        return
    for table, name, column, parent in keys:
        ondelete = "CASCADE" if name in cascade else None
        op.create_foreign_key(name, table, parent, [column], ["id"], ondelete=ondelete)
