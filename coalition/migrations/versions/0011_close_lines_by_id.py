"""Statement lines indexed by (statement_id, id) instead of (statement_id, posted_at): the close
writes a period's lines grouped by statement without sorting each statement's lines by time
(an integer key sorts a million lines in a fraction of the time), so the ids of a statement's
lines increase as they are written and this index is filled at its right edge; a statement's
lines are still read in one short range, and ordered by (posted_at, id) as they always were

Revision ID: 0011_close_lines_by_id
Revises: 0010_webhook_attempts
"""

from __future__ import annotations

from alembic import op

revision = "0011_close_lines_by_id"
down_revision = "0010_webhook_attempts"
branch_labels = None
depends_on = None


def _index_on(column: str) -> None:
    op.drop_index("ix_statement_lines_statement", table_name="statement_lines")
    op.create_index("ix_statement_lines_statement", "statement_lines", ["statement_id", column])


def upgrade() -> None:
    _index_on("id")


def downgrade() -> None:
    _index_on("posted_at")
