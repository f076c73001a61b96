"""The console's sign-in: single-use links and sessions, stored as SHA-256 of their tokens
(partners/signin.py)

Revision ID: 0007_console
Revises: 0006_webhooks
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_console"
down_revision = "0006_webhooks"
branch_labels = None
depends_on = None

ROLE = "role IN ('operator', 'finance', 'partner', 'member')"
WHO = (
    "(role IN ('operator', 'finance') AND partner_id IS NULL AND member_id IS NULL)"
    " OR (role = 'partner' AND partner_id IS NOT NULL AND member_id IS NULL)"
    " OR (role = 'member' AND partner_id IS NOT NULL AND member_id IS NOT NULL)"
)


def upgrade() -> None:
    op.create_table(
        "sign_in_links",
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("partner_id", sa.String(40), nullable=True),
        sa.Column("member_id", sa.String(68), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(ROLE, name="ck_sign_in_links_role"),
        sa.CheckConstraint(WHO, name="ck_sign_in_links_who"),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name="fk_sign_in_links_partner_id_partners"
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name="fk_sign_in_links_member_id_members"
        ),
        sa.PrimaryKeyConstraint("token_sha256", name="pk_sign_in_links"),
    )
    op.create_index("ix_sign_in_links_expires_at", "sign_in_links", ["expires_at"])
    op.create_table(
        "console_sessions",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("partner_id", sa.String(40), nullable=True),
        sa.Column("member_id", sa.String(68), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(ROLE, name="ck_console_sessions_role"),
        sa.CheckConstraint(WHO, name="ck_console_sessions_who"),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name="fk_console_sessions_partner_id_partners"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_console_sessions"),
        sa.UniqueConstraint("token_sha256", name="uq_console_sessions_token_sha256"),
    )
    op.create_index("ix_console_sessions_expires_at", "console_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_console_sessions_expires_at", table_name="console_sessions")
    op.drop_table("console_sessions")
    op.drop_index("ix_sign_in_links_expires_at", table_name="sign_in_links")
    op.drop_table("sign_in_links")
