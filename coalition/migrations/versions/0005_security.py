"""Security: member ids up to their documented 68 characters

Revision ID: 0005_security
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_security"
down_revision = "0003"
branch_labels = None
depends_on = None

#: Member ids are ``mem_`` and 1 to 64 characters (coalition.ids.MEMBER_ID_MAX_LENGTH); the
#: columns held 40, so a longer id was a 500 on PostgreSQL instead of a member.
MEMBER_ID_COLUMNS = (
    ("members", "id"),
    ("holds", "member_id"),
    ("transactions", "member_id"),
    ("lots", "member_id"),
)


def _sqlite_declared_length(old: int, new: int) -> None:
    """SQLite never enforces a VARCHAR length, so only the declared type changes: the
    procedure SQLite documents for schema changes that leave the stored rows as they are
    (https://www.sqlite.org/lang_altertable.html, "making other kinds of table schema
    changes"), instead of copying every table that refers to members."""
    conn = op.get_bind()
    version = conn.exec_driver_sql("PRAGMA schema_version").scalar_one()
    conn.exec_driver_sql("PRAGMA writable_schema=ON")
    for table, column in MEMBER_ID_COLUMNS:
        conn.execute(
            sa.text(
                "UPDATE sqlite_master SET sql = replace(sql, :old, :new) "
                "WHERE type = 'table' AND name = :table"
            ),
            {
                "old": f"\t{column} VARCHAR({old}) NOT NULL",
                "new": f"\t{column} VARCHAR({new}) NOT NULL",
                "table": table,
            },
        )
    conn.exec_driver_sql(f"PRAGMA schema_version={int(version) + 1}")
    conn.exec_driver_sql("PRAGMA writable_schema=OFF")


def _resize(old: int, new: int) -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_declared_length(old, new)
        return
    # PostgreSQL: a longer varchar is a catalog change, no table rewrite.
    for table, column in MEMBER_ID_COLUMNS:
        op.alter_column(
            table,
            column,
            type_=sa.String(new),
            existing_type=sa.String(old),
            existing_nullable=False,
        )


def upgrade() -> None:
    _resize(40, 68)


def downgrade() -> None:
    _resize(68, 40)
