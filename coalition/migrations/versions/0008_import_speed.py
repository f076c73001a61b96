"""The tier basis per member and UTC day (qualifying_days), filled from the ledger

Revision ID: 0008_import_speed
Revises: 0007_console
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_import_speed"
down_revision = "0007_console"
branch_labels = None
depends_on = None

#: The UTC day (days since 1970-01-01) a transaction occurred on, per dialect (SQLite stores
#: naive UTC text).
_DAY_OF = {
    "postgresql": "CAST(FLOOR(EXTRACT(EPOCH FROM occurred_at) / 86400) AS INTEGER)",
    "sqlite": "CAST(strftime('%s', occurred_at) AS INTEGER) / 86400",
}


def upgrade() -> None:
    op.create_table(
        "qualifying_days",
        sa.Column("member_id", sa.String(68), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name="fk_qualifying_days_member_id_members"
        ),
        sa.PrimaryKeyConstraint("member_id", "day", name="pk_qualifying_days"),
    )
    day = _DAY_OF[op.get_bind().dialect.name]
    op.execute(
        "INSERT INTO qualifying_days (member_id, day, points)"  # noqa: S608 (built from constants)
        f" SELECT member_id, {day},"
        " SUM(CASE WHEN kind = 'earn' THEN points ELSE -points END) FROM transactions"
        " WHERE kind IN ('earn', 'earn_reversal')"
        f" GROUP BY member_id, {day}"
    )


def downgrade() -> None:
    op.drop_table("qualifying_days")
