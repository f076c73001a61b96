"""Statement lines without foreign keys: the close writes a million of them in one statement,
and each foreign key was a trigger and a row lock per line (invariant 5 checks every line's
statement, transaction and dispute instead); statement documents compressed with lz4 where the
server has it (pglz took five times as long to write a period's documents)

Revision ID: 0009_close_speed
Revises: 0008_import_speed
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from coalition.db import ExactDecimal, UTCDateTime

revision = "0009_close_speed"
down_revision = "0008_import_speed"
branch_labels = None
depends_on = None

#: (column, referenced table.column) of each foreign key the lines had.
FOREIGN_KEYS = (
    ("statement_id", "statements.id"),
    ("transaction_id", "transactions.id"),
    ("dispute_id", "disputes.id"),
)


def _fk_name(column: str, target: str) -> str:
    return f"fk_statement_lines_{column}_{target.split('.', maxsplit=1)[0]}"


def _rebuild_sqlite(*, foreign_keys: bool) -> None:
    """SQLite cannot drop or add a foreign key: build the table anew, copy the lines, and put
    back its indexes and append-only triggers (dropped with the old table)."""
    op.create_table(
        "statement_lines_new",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("statement_id", sa.String(length=40), nullable=False),
        sa.Column("transaction_id", sa.String(length=40), nullable=True),
        sa.Column("dispute_id", sa.String(length=40), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("posted_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("occurred_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("unit_price", ExactDecimal(precision=30, scale=12), nullable=True),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("prior_period", sa.Boolean(), nullable=False),
        sa.CheckConstraint(
            "(kind = 'adjustment') = (dispute_id IS NOT NULL)",
            name="ck_statement_lines_adjustment_source",
        ),
        sa.CheckConstraint(
            "kind = 'adjustment' OR (amount_minor >= 0 AND unit_price IS NOT NULL)",
            name="ck_statement_lines_amount_positive",
        ),
        sa.CheckConstraint(
            "kind IN ('earn', 'bonus', 'earn_reversal', 'burn', 'burn_reversal', 'adjustment')",
            name="ck_statement_lines_kind",
        ),
        sa.CheckConstraint(
            "(transaction_id IS NULL) <> (dispute_id IS NULL)",
            name="ck_statement_lines_one_source",
        ),
        *(
            sa.ForeignKeyConstraint([column], [target], name=_fk_name(column, target))
            for column, target in (FOREIGN_KEYS if foreign_keys else ())
        ),
        sa.PrimaryKeyConstraint("id", name="pk_statement_lines"),
    )
    op.execute("INSERT INTO statement_lines_new SELECT * FROM statement_lines")
    op.drop_table("statement_lines")
    op.rename_table("statement_lines_new", "statement_lines")
    op.create_index(
        "ix_statement_lines_statement", "statement_lines", ["statement_id", "posted_at"]
    )
    op.create_index(
        "uq_statement_lines_dispute",
        "statement_lines",
        ["dispute_id"],
        unique=True,
        sqlite_where=sa.text("dispute_id IS NOT NULL"),
    )
    op.create_index(
        "uq_statement_lines_transaction", "statement_lines", ["transaction_id"], unique=True
    )
    for operation in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER statement_lines_append_only_{operation.lower()}"
            f" BEFORE {operation} ON statement_lines"
            f" BEGIN SELECT RAISE(ABORT, 'statement_lines is append-only: {operation} refused');"
            " END"
        )


def _has_lz4() -> bool:
    return bool(
        op.get_bind().scalar(
            sa.text(
                "SELECT 'lz4' = ANY(enumvals) FROM pg_settings"
                " WHERE name = 'default_toast_compression'"
            )
        )
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(foreign_keys=False)
        return
    for column, target in FOREIGN_KEYS:
        op.drop_constraint(_fk_name(column, target), "statement_lines", type_="foreignkey")
    # Documents written from now on (existing ones stay as they are, readable either way).
    if _has_lz4():
        op.execute("ALTER TABLE statements ALTER COLUMN document SET COMPRESSION lz4")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(foreign_keys=True)
        return
    op.execute("ALTER TABLE statements ALTER COLUMN document SET COMPRESSION default")
    for column, target in FOREIGN_KEYS:
        table, referenced = target.split(".")
        op.create_foreign_key(
            _fk_name(column, target), "statement_lines", table, [column], [referenced]
        )
