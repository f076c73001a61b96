"""Settlement: periods, statements and their lines, status history, disputes, signing keys;
append-only lines and immutable issued statements

Revision ID: 0004_settlement
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from coalition.db import ExactDecimal, UTCDateTime

revision = "0004_settlement"
down_revision = "0003"
branch_labels = None
depends_on = None

APPEND_ONLY = ("statement_lines", "statement_events")
#: What an issued statement may never change (its status, document and signature move on).
IMMUTABLE = (
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


def upgrade() -> None:
    op.create_table(
        "settlement_periods",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("start_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("end_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("closed_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("cycle", sa.String(length=16), nullable=False),
        sa.CheckConstraint(
            "start_at < end_at", name=op.f("ck_settlement_periods_start_before_end")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlement_periods")),
    )
    op.create_index("uq_settlement_periods_end", "settlement_periods", ["end_at"], unique=True)
    op.create_index("uq_settlement_periods_start", "settlement_periods", ["start_at"], unique=True)
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("private_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_signing_keys")),
    )
    op.create_index("uq_signing_keys_generation", "signing_keys", ["generation"], unique=True)
    op.create_table(
        "statements",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("period_id", sa.String(length=40), nullable=False),
        sa.Column("partner_id", sa.String(length=40), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("currency_exponent", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("issued_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("line_count", sa.BigInteger(), nullable=False),
        sa.Column("issued_points", sa.BigInteger(), nullable=False),
        sa.Column("issued_minor", sa.BigInteger(), nullable=False),
        sa.Column("earn_reversed_minor", sa.BigInteger(), nullable=False),
        sa.Column("redeemed_points", sa.BigInteger(), nullable=False),
        sa.Column("reimbursed_minor", sa.BigInteger(), nullable=False),
        sa.Column("burn_reversed_minor", sa.BigInteger(), nullable=False),
        sa.Column("adjustments_minor", sa.BigInteger(), nullable=False),
        sa.Column("net_minor", sa.BigInteger(), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("issued_sha256", sa.String(length=64), nullable=True),
        sa.Column("document", sa.Text(), nullable=True),
        sa.Column("content_sha256", sa.String(length=64), nullable=True),
        sa.Column("signing_kid", sa.String(length=64), nullable=True),
        sa.Column("signature", sa.String(length=128), nullable=True),
        sa.Column("payment_reference", sa.String(length=255), nullable=True),
        sa.Column("paid_at", UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "direction IN ('partner_pays', 'operator_pays', 'none')",
            name=op.f("ck_statements_direction"),
        ),
        sa.CheckConstraint(
            "status IN ('issued', 'acknowledged', 'disputed', 'settled')",
            name=op.f("ck_statements_status"),
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_statements_partner_id_partners")
        ),
        sa.ForeignKeyConstraint(
            ["period_id"],
            ["settlement_periods.id"],
            name=op.f("fk_statements_period_id_settlement_periods"),
        ),
        sa.ForeignKeyConstraint(
            ["signing_kid"],
            ["signing_keys.kid"],
            name=op.f("fk_statements_signing_kid_signing_keys"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_statements")),
    )
    op.create_index("ix_statements_partner", "statements", ["partner_id", "id"], unique=False)
    op.create_index("ix_statements_status", "statements", ["status", "id"], unique=False)
    op.create_index(
        "uq_statements_period_partner", "statements", ["period_id", "partner_id"], unique=True
    )
    op.create_table(
        "disputes",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("statement_id", sa.String(length=40), nullable=False),
        sa.Column("partner_id", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.String(length=2000), nullable=False),
        sa.Column("transaction_ids", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by_key", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=24), nullable=True),
        sa.Column("resolution_note", sa.String(length=2000), nullable=True),
        sa.Column("adjustment_minor", sa.BigInteger(), nullable=True),
        sa.Column("resolved_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("resolved_by_key", sa.String(length=64), nullable=True),
        sa.CheckConstraint(
            "(status = 'resolved') = (resolved_at IS NOT NULL AND outcome IS NOT NULL)",
            name=op.f("ck_disputes_resolution"),
        ),
        sa.CheckConstraint(
            "adjustment_minor IS NULL OR (status = 'resolved' AND adjustment_minor <> 0)",
            name=op.f("ck_disputes_adjustment"),
        ),
        sa.CheckConstraint("status IN ('open', 'resolved')", name=op.f("ck_disputes_status")),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_disputes_partner_id_partners")
        ),
        sa.ForeignKeyConstraint(
            ["statement_id"], ["statements.id"], name=op.f("fk_disputes_statement_id_statements")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_disputes")),
    )
    op.create_index(
        "ix_disputes_adjustments",
        "disputes",
        ["partner_id", "resolved_at"],
        unique=False,
        postgresql_where=sa.text("adjustment_minor IS NOT NULL"),
        sqlite_where=sa.text("adjustment_minor IS NOT NULL"),
    )
    op.create_index("ix_disputes_partner", "disputes", ["partner_id", "id"], unique=False)
    op.create_index("ix_disputes_statement", "disputes", ["statement_id"], unique=False)
    op.create_table(
        "statement_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("statement_id", sa.String(length=40), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("note", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["statement_id"],
            ["statements.id"],
            name=op.f("fk_statement_events_statement_id_statements"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_statement_events")),
    )
    op.create_index(
        "ix_statement_events_statement", "statement_events", ["statement_id", "id"], unique=False
    )
    op.create_table(
        "statement_lines",
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
            name=op.f("ck_statement_lines_adjustment_source"),
        ),
        sa.CheckConstraint(
            "kind = 'adjustment' OR (amount_minor >= 0 AND unit_price IS NOT NULL)",
            name=op.f("ck_statement_lines_amount_positive"),
        ),
        sa.CheckConstraint(
            "kind IN ('earn', 'bonus', 'earn_reversal', 'burn', 'burn_reversal', 'adjustment')",
            name=op.f("ck_statement_lines_kind"),
        ),
        sa.CheckConstraint(
            "(transaction_id IS NULL) <> (dispute_id IS NULL)",
            name=op.f("ck_statement_lines_one_source"),
        ),
        sa.ForeignKeyConstraint(
            ["dispute_id"], ["disputes.id"], name=op.f("fk_statement_lines_dispute_id_disputes")
        ),
        sa.ForeignKeyConstraint(
            ["statement_id"],
            ["statements.id"],
            name=op.f("fk_statement_lines_statement_id_statements"),
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["transactions.id"],
            name=op.f("fk_statement_lines_transaction_id_transactions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_statement_lines")),
    )
    op.create_index(
        "ix_statement_lines_statement",
        "statement_lines",
        ["statement_id", "posted_at"],
        unique=False,
    )
    op.create_index(
        "uq_statement_lines_dispute",
        "statement_lines",
        ["dispute_id"],
        unique=True,
        postgresql_where=sa.text("dispute_id IS NOT NULL"),
        sqlite_where=sa.text("dispute_id IS NOT NULL"),
    )
    op.create_index(
        "uq_statement_lines_transaction", "statement_lines", ["transaction_id"], unique=True
    )
    _guards()


def _guards() -> None:
    """The database refuses edits of lines and history, and of an issued statement's money."""
    if op.get_bind().dialect.name == "postgresql":
        for table in APPEND_ONLY:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE"
                f" ON {table} FOR EACH STATEMENT EXECUTE FUNCTION coalition_append_only()"
            )
        changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in IMMUTABLE)
        op.execute(
            f"""
            CREATE FUNCTION coalition_statement_issued() RETURNS trigger LANGUAGE plpgsql AS $$
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
        op.execute(
            "CREATE TRIGGER statements_issued BEFORE UPDATE OR DELETE ON statements"
            " FOR EACH ROW EXECUTE FUNCTION coalition_statement_issued()"
        )
        return
    for table in APPEND_ONLY:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_append_only_{operation.lower()}"
                f" BEFORE {operation} ON {table}"
                f" BEGIN SELECT RAISE(ABORT, '{table} is append-only: {operation} refused'); END"
            )
    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in IMMUTABLE)
    op.execute(
        "CREATE TRIGGER statements_issued_update BEFORE UPDATE ON statements"
        f" WHEN OLD.issued_sha256 IS NOT NULL AND ({changed})"
        " BEGIN SELECT RAISE(ABORT, 'an issued statement''s money never changes'); END"
    )
    op.execute(
        "CREATE TRIGGER statements_no_delete BEFORE DELETE ON statements"
        " BEGIN SELECT RAISE(ABORT, 'statements are never deleted'); END"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS statements_issued ON statements")
        op.execute("DROP FUNCTION IF EXISTS coalition_statement_issued()")
    for table in (
        "statement_lines",
        "statement_events",
        "disputes",
        "statements",
        "signing_keys",
        "settlement_periods",
    ):
        op.drop_table(table)
