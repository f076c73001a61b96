"""Payments and bank reconciliation: partners' bank details (four eyes), payment runs, their
items and files, imported bank statements and their entries, and the payment behind each
settled statement (settlement/payments/, docs/payments.md); console sign-ins name the finance
key they act for

Statements settled before this revision get a ``decision`` payment carrying their
``payment_reference``: finance's recorded decision, as invariant 7 asks.

Revision ID: 0014_payments
Revises: 0013_member_links
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_payments"
down_revision = "0013_member_links"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "partner_bank_accounts",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("partner_id", sa.String(40), nullable=False),
        sa.Column("holder", sa.String(70), nullable=False),
        sa.Column("iban", sa.String(34), nullable=False),
        sa.Column("bic", sa.String(11), nullable=True),
        sa.Column("mandate_id", sa.String(35), nullable=True),
        sa.Column("mandate_signed_on", sa.Date(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("proposed_by", sa.String(40), nullable=False),
        sa.Column("proposed_via", sa.String(40), nullable=False),
        sa.Column("proposed_at", TS, nullable=False),
        sa.Column("approved_by", sa.String(40), nullable=True),
        sa.Column("approved_via", sa.String(40), nullable=True),
        sa.Column("approved_at", TS, nullable=True),
        sa.Column("ended_at", TS, nullable=True),
        sa.CheckConstraint(
            _in("status", ("pending", "active", "retired", "replaced")),
            name="ck_partner_bank_accounts_status",
        ),
        sa.CheckConstraint(
            "approved_by IS NULL OR approved_by <> proposed_by",
            name="ck_partner_bank_accounts_four_eyes",
        ),
        sa.CheckConstraint(
            "(status IN ('active', 'retired')) = (approved_by IS NOT NULL AND approved_at IS NOT NULL)",
            name="ck_partner_bank_accounts_approved",
        ),
        sa.CheckConstraint(
            "(mandate_id IS NULL) = (mandate_signed_on IS NULL)",
            name="ck_partner_bank_accounts_mandate_complete",
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name="fk_partner_bank_accounts_partner_id_partners"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_partner_bank_accounts"),
    )
    op.create_index(
        "uq_partner_bank_accounts_active",
        "partner_bank_accounts",
        ["partner_id"],
        unique=True,
        postgresql_where=sa.text("status = 'active'"),
        sqlite_where=sa.text("status = 'active'"),
    )
    op.create_index(
        "uq_partner_bank_accounts_pending",
        "partner_bank_accounts",
        ["partner_id"],
        unique=True,
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_partner_bank_accounts_partner", "partner_bank_accounts", ["partner_id", "id"]
    )
    op.create_table(
        "payment_runs",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("execution_date", sa.Date(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.String(40), nullable=False),
        sa.Column("cancelled_at", TS, nullable=True),
        sa.Column("cancelled_by", sa.String(40), nullable=True),
        sa.Column("cancel_note", sa.String(500), nullable=True),
        sa.CheckConstraint(_in("status", ("created", "cancelled")), name="ck_payment_runs_status"),
        sa.CheckConstraint(
            "(status = 'cancelled') = (cancelled_at IS NOT NULL)",
            name="ck_payment_runs_cancelled_has_time",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_payment_runs"),
    )
    op.create_table(
        "payment_items",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("statement_id", sa.String(40), nullable=False),
        sa.Column("partner_id", sa.String(40), nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("end_to_end_id", sa.String(35), nullable=False),
        sa.Column("bank_account_id", sa.String(40), nullable=True),
        sa.Column("file_name", sa.String(80), nullable=True),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("live", sa.Boolean(), nullable=False),
        sa.CheckConstraint(
            _in("direction", ("credit_transfer", "direct_debit", "skipped")),
            name="ck_payment_items_direction",
        ),
        sa.CheckConstraint(
            "(direction = 'skipped') = (file_name IS NULL AND reason IS NOT NULL)",
            name="ck_payment_items_skipped_has_reason",
        ),
        sa.CheckConstraint(
            "NOT live OR direction <> 'skipped'", name="ck_payment_items_live_is_paid"
        ),
        sa.CheckConstraint("amount_minor >= 0", name="ck_payment_items_amount_not_negative"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["payment_runs.id"], name="fk_payment_items_run_id_payment_runs"
        ),
        sa.ForeignKeyConstraint(
            ["statement_id"], ["statements.id"], name="fk_payment_items_statement_id_statements"
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name="fk_payment_items_partner_id_partners"
        ),
        sa.ForeignKeyConstraint(
            ["bank_account_id"],
            ["partner_bank_accounts.id"],
            name="fk_payment_items_bank_account_id_partner_bank_accounts",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_payment_items"),
    )
    op.create_index("ix_payment_items_run", "payment_items", ["run_id", "id"])
    op.create_index(
        "uq_payment_items_live_statement",
        "payment_items",
        ["statement_id"],
        unique=True,
        postgresql_where=sa.text("live"),
        sqlite_where=sa.text("live"),
    )
    op.create_table(
        "payment_files",
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(80), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("transactions", sa.Integer(), nullable=False),
        sa.Column("control_sum_minor", sa.BigInteger(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["payment_runs.id"], name="fk_payment_files_run_id_payment_runs"
        ),
        sa.PrimaryKeyConstraint("run_id", "name", name="pk_payment_files"),
    )
    op.create_table(
        "bank_statement_files",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("bank_statement_id", sa.String(140), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("imported_at", TS, nullable=False),
        sa.Column("imported_by", sa.String(40), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bank_statement_files"),
    )
    op.create_index(
        "uq_bank_statement_files_sha256", "bank_statement_files", ["sha256"], unique=True
    )
    op.create_table(
        "bank_entries",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("file_id", sa.String(40), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("account_iban", sa.String(34), nullable=True),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("credit", sa.Boolean(), nullable=False),
        sa.Column("booking_date", sa.Date(), nullable=False),
        sa.Column("end_to_end_id", sa.String(140), nullable=True),
        sa.Column("bank_reference", sa.String(140), nullable=True),
        sa.Column("remittance", sa.String(1000), nullable=False),
        sa.Column("reversal", sa.Boolean(), nullable=False),
        sa.Column("return_reason", sa.String(140), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("statement_id", sa.String(40), nullable=True),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("resolved_at", TS, nullable=True),
        sa.Column("resolved_by", sa.String(40), nullable=True),
        sa.Column("note", sa.String(2000), nullable=True),
        sa.CheckConstraint(
            _in("status", ("matched", "unmatched", "resolved", "dismissed")),
            name="ck_bank_entries_status",
        ),
        sa.CheckConstraint("amount_minor > 0", name="ck_bank_entries_amount_positive"),
        sa.CheckConstraint(
            "status <> 'unmatched' OR reason IS NOT NULL", name="ck_bank_entries_queue_has_reason"
        ),
        sa.CheckConstraint(
            "(status IN ('resolved', 'dismissed')) = (resolved_at IS NOT NULL)",
            name="ck_bank_entries_resolution",
        ),
        sa.CheckConstraint(
            "status NOT IN ('matched', 'resolved') OR statement_id IS NOT NULL",
            name="ck_bank_entries_match_names_statement",
        ),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["bank_statement_files.id"],
            name="fk_bank_entries_file_id_bank_statement_files",
        ),
        sa.ForeignKeyConstraint(
            ["statement_id"], ["statements.id"], name="fk_bank_entries_statement_id_statements"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_bank_entries"),
    )
    op.create_index("ix_bank_entries_file", "bank_entries", ["file_id", "line"])
    op.create_index(
        "ix_bank_entries_queue",
        "bank_entries",
        ["id"],
        postgresql_where=sa.text("status = 'unmatched'"),
        sqlite_where=sa.text("status = 'unmatched'"),
    )
    op.create_table(
        "statement_payments",
        sa.Column("statement_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("bank_entry_id", sa.String(40), nullable=True),
        sa.Column("reference", sa.String(255), nullable=False),
        sa.Column("paid_at", TS, nullable=False),
        sa.Column("recorded_at", TS, nullable=False),
        sa.Column("recorded_by", sa.String(40), nullable=False),
        sa.CheckConstraint(
            _in("kind", ("bank_entry", "decision")), name="ck_statement_payments_kind"
        ),
        sa.CheckConstraint(
            "(kind = 'bank_entry') = (bank_entry_id IS NOT NULL)",
            name="ck_statement_payments_evidence",
        ),
        sa.ForeignKeyConstraint(
            ["statement_id"],
            ["statements.id"],
            name="fk_statement_payments_statement_id_statements",
        ),
        sa.ForeignKeyConstraint(
            ["bank_entry_id"],
            ["bank_entries.id"],
            name="fk_statement_payments_bank_entry_id_bank_entries",
        ),
        sa.PrimaryKeyConstraint("statement_id", name="pk_statement_payments"),
    )
    op.create_index(
        "uq_statement_payments_bank_entry",
        "statement_payments",
        ["bank_entry_id"],
        unique=True,
        postgresql_where=sa.text("bank_entry_id IS NOT NULL"),
        sqlite_where=sa.text("bank_entry_id IS NOT NULL"),
    )
    # Statements settled before: finance's recorded decision (their payment reference).
    op.execute(
        "INSERT INTO statement_payments (statement_id, kind, bank_entry_id, reference, paid_at,"
        " recorded_at, recorded_by)"
        " SELECT s.id, 'decision', NULL, COALESCE(s.payment_reference, 'settled before 0014'),"
        " COALESCE(s.paid_at, s.issued_at), COALESCE(s.paid_at, s.issued_at),"
        " COALESCE((SELECT e.key_id FROM statement_events e WHERE e.statement_id = s.id"
        " AND e.to_status = 'settled' ORDER BY e.id DESC LIMIT 1), 'unknown')"
        " FROM statements s WHERE s.status = 'settled'"
    )
    for table in ("sign_in_links", "console_sessions"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("key_id", sa.String(40), nullable=True))
            batch.create_foreign_key(f"fk_{table}_key_id_api_keys", "api_keys", ["key_id"], ["id"])


def downgrade() -> None:
    for table in ("console_sessions", "sign_in_links"):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"fk_{table}_key_id_api_keys", type_="foreignkey")
            batch.drop_column("key_id")
    op.drop_index("uq_statement_payments_bank_entry", table_name="statement_payments")
    op.drop_table("statement_payments")
    op.drop_index("ix_bank_entries_queue", table_name="bank_entries")
    op.drop_index("ix_bank_entries_file", table_name="bank_entries")
    op.drop_table("bank_entries")
    op.drop_index("uq_bank_statement_files_sha256", table_name="bank_statement_files")
    op.drop_table("bank_statement_files")
    op.drop_table("payment_files")
    op.drop_index("uq_payment_items_live_statement", table_name="payment_items")
    op.drop_index("ix_payment_items_run", table_name="payment_items")
    op.drop_table("payment_items")
    op.drop_table("payment_runs")
    op.drop_index("ix_partner_bank_accounts_partner", table_name="partner_bank_accounts")
    op.drop_index("uq_partner_bank_accounts_pending", table_name="partner_bank_accounts")
    op.drop_index("uq_partner_bank_accounts_active", table_name="partner_bank_accounts")
    op.drop_table("partner_bank_accounts")
