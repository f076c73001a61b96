"""Statements know the id range of their lines; the lines' (statement_id, posted_at) index is
gone: the close writes a statement's lines together (their ids one short range), so a
statement's lines are read through the primary key, ``id BETWEEN first_line_id AND
last_line_id AND statement_id = ...``, and the close no longer maintains a second index of a
million entries per million lines (a third of its writing time)

Existing statements get the range of their lines (the smallest and largest id among them, which
holds them however they were written). An issued statement's range never changes, like its
money: the guard of migration 0004 now covers the two columns.

Revision ID: 0012_close_lines_by_id
Revises: 0011_imp_zero_sum_per_statement
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_close_lines_by_id"
down_revision = "0011_imp_zero_sum_per_statement"
branch_labels = None
depends_on = None

#: What an issued statement may never change (migration 0004's list, and the line range).
_IMMUTABLE = (
    "period_id",
    "partner_id",
    "currency",
    "currency_exponent",
    "issued_at",
    "line_count",
    "issued_points",
    "issued_minor",
    "earn_reversed_minor",
    "redeemed_points",
    "reimbursed_minor",
    "burn_reversed_minor",
    "adjustments_minor",
    "net_minor",
    "direction",
    "issued_sha256",
)
_RANGE = ("first_line_id", "last_line_id")


def _guard(columns: tuple[str, ...]) -> None:
    """Migration 0004's guard of issued statements, over ``columns``."""
    if op.get_bind().dialect.name == "postgresql":
        changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in columns)
        op.execute(
            f"""
            CREATE OR REPLACE FUNCTION coalition_statement_issued() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'DELETE' THEN
                    RAISE EXCEPTION 'statements are never deleted'
                        USING ERRCODE = 'restrict_violation';
                END IF;
                IF OLD.issued_sha256 IS NOT NULL AND ({changed}) THEN
                    RAISE EXCEPTION 'statement % is issued: its money never changes', OLD.id
                        USING ERRCODE = 'restrict_violation';
                END IF;
                RETURN NEW;
            END $$;
            """
        )
        return
    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in columns)
    op.execute("DROP TRIGGER statements_issued_update")
    op.execute(
        "CREATE TRIGGER statements_issued_update BEFORE UPDATE ON statements"
        f" WHEN OLD.issued_sha256 IS NOT NULL AND ({changed})"
        " BEGIN SELECT RAISE(ABORT, 'an issued statement''s money never changes'); END"
    )


def upgrade() -> None:
    for column in _RANGE:
        op.add_column("statements", sa.Column(column, sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE statements SET"
        " first_line_id = (SELECT MIN(l.id) FROM statement_lines l"
        " WHERE l.statement_id = statements.id),"
        " last_line_id = (SELECT MAX(l.id) FROM statement_lines l"
        " WHERE l.statement_id = statements.id)"
    )
    op.drop_index("ix_statement_lines_statement", table_name="statement_lines")
    _guard(_IMMUTABLE + _RANGE)


def downgrade() -> None:
    _guard(_IMMUTABLE)
    op.create_index(
        "ix_statement_lines_statement", "statement_lines", ["statement_id", "posted_at"]
    )
    for column in _RANGE:
        # Plain ALTER TABLE on SQLite too (3.35+): a batch rebuild would drop its triggers.
        op.execute(f"ALTER TABLE statements DROP COLUMN {column}")
