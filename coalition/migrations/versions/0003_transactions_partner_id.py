"""Index transactions by (partner_id, id): a partner's transaction list pages by id

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # GET /v1/transactions is keyset-paginated on the time-ordered id within one partner;
    # without this index a small partner's page would walk the whole primary key backwards.
    op.create_index("ix_transactions_partner_id", "transactions", ["partner_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_transactions_partner_id", table_name="transactions")
