"""The ledger, partners, rate cards and keys; append-only triggers; zero-sum postings

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from coalition.db import ExactDecimal, UTCDateTime

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# The operator's accounts have fixed ids (coalition.models.OPERATOR_ACCOUNTS).
OPERATOR_ACCOUNTS = {"operator_bonus": 1, "operator_breakage": 2, "operator_adjustment": 3}

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.CheckConstraint(
            "kind IN ('member', 'partner_issued', 'partner_redeemed', 'operator_bonus', 'operator_breakage', 'operator_adjustment')",
            name=op.f("ck_accounts_kind"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
    )
    op.create_table(
        "members",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", BIG_ID, nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("held", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("held >= 0", name=op.f("ck_members_held_not_negative")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_members_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_members")),
        sa.UniqueConstraint("account_id", name=op.f("uq_members_account_id")),
    )
    op.create_table(
        "partners",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("issued_account_id", BIG_ID, nullable=False),
        sa.Column("redeemed_account_id", BIG_ID, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("status IN ('active', 'suspended')", name=op.f("ck_partners_status")),
        sa.ForeignKeyConstraint(
            ["issued_account_id"],
            ["accounts.id"],
            name=op.f("fk_partners_issued_account_id_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["redeemed_account_id"],
            ["accounts.id"],
            name=op.f("fk_partners_redeemed_account_id_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_partners")),
        sa.UniqueConstraint("issued_account_id", name=op.f("uq_partners_issued_account_id")),
        sa.UniqueConstraint("redeemed_account_id", name=op.f("uq_partners_redeemed_account_id")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("partner_id", sa.String(length=40), nullable=True),
        sa.Column("alg", sa.String(length=16), nullable=False),
        sa.Column("scopes", sa.String(length=200), nullable=False),
        sa.Column("secret_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("public_key", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("last_used_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "(alg = 'hmac-sha256' AND secret_sealed IS NOT NULL AND public_key IS NULL) OR (alg = 'ed25519' AND public_key IS NOT NULL AND secret_sealed IS NULL)",
            name=op.f("ck_api_keys_alg_material"),
        ),
        sa.CheckConstraint(
            "(role = 'partner') = (partner_id IS NOT NULL)", name=op.f("ck_api_keys_partner_keys")
        ),
        sa.CheckConstraint(
            "role IN ('partner', 'operator', 'finance')", name=op.f("ck_api_keys_role")
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_api_keys_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_index("ix_api_keys_partner", "api_keys", ["partner_id"], unique=False)

    op.create_table(
        "holds",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("partner_id", sa.String(length=40), nullable=False),
        sa.Column("member_id", sa.String(length=40), nullable=False),
        sa.Column("reference", sa.String(length=255), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
        sa.Column("captured_points", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "status IN ('active', 'captured', 'voided', 'expired')", name=op.f("ck_holds_status")
        ),
        sa.CheckConstraint(
            "captured_points IS NULL OR (captured_points > 0 AND captured_points <= points)",
            name=op.f("ck_holds_captured_within_held"),
        ),
        sa.CheckConstraint("points > 0", name=op.f("ck_holds_points_positive")),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_holds_member_id_members")
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_holds_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_holds")),
    )
    op.create_index(
        "ix_holds_active_expiry",
        "holds",
        ["expires_at"],
        unique=False,
        postgresql_where=sa.text("status = 'active'"),
        sqlite_where=sa.text("status = 'active'"),
    )
    op.create_index(
        "ix_holds_member_active",
        "holds",
        ["member_id"],
        unique=False,
        postgresql_where=sa.text("status = 'active'"),
        sqlite_where=sa.text("status = 'active'"),
    )
    op.create_index("uq_holds_partner_reference", "holds", ["partner_id", "reference"], unique=True)

    op.create_table(
        "rate_cards",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("partner_id", sa.String(length=40), nullable=False),
        sa.Column("effective_from", UTCDateTime(), nullable=False),
        sa.Column("earn_points_per_unit", ExactDecimal(), nullable=False),
        sa.Column("issue_price_per_point", ExactDecimal(), nullable=False),
        sa.Column("burn_value_per_point", ExactDecimal(), nullable=False),
        sa.Column("reimburse_price_per_point", ExactDecimal(), nullable=False),
        sa.Column("max_burn_share", ExactDecimal(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "CAST(earn_points_per_unit AS NUMERIC) >= 0 AND CAST(issue_price_per_point AS NUMERIC) >= 0 AND CAST(burn_value_per_point AS NUMERIC) > 0 AND CAST(reimburse_price_per_point AS NUMERIC) >= 0 AND (max_burn_share IS NULL OR (CAST(max_burn_share AS NUMERIC) > 0 AND CAST(max_burn_share AS NUMERIC) <= 1))",
            name=op.f("ck_rate_cards_rates_in_range"),
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_rate_cards_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rate_cards")),
    )
    op.create_index(
        "uq_rate_cards_partner_effective",
        "rate_cards",
        ["partner_id", "effective_from"],
        unique=True,
    )

    op.create_table(
        "transactions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("partner_id", sa.String(length=40), nullable=True),
        sa.Column("member_id", sa.String(length=40), nullable=False),
        sa.Column("reference", sa.String(length=255), nullable=True),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("rate_card_id", sa.String(length=40), nullable=True),
        sa.Column("tier", sa.String(length=32), nullable=True),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("posted_at", UTCDateTime(), nullable=False),
        sa.Column("reverses", sa.String(length=40), nullable=True),
        sa.Column("hold_id", sa.String(length=40), nullable=True),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("overdraft_points", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.CheckConstraint(
            "kind IN ('earn', 'burn', 'earn_reversal', 'burn_reversal', 'bonus', 'adjustment', 'expiry')",
            name=op.f("ck_transactions_kind"),
        ),
        sa.CheckConstraint(
            "(amount_minor IS NULL) = (currency IS NULL)",
            name=op.f("ck_transactions_amount_has_currency"),
        ),
        sa.CheckConstraint(
            "overdraft_points >= 0", name=op.f("ck_transactions_overdraft_not_negative")
        ),
        sa.CheckConstraint("points > 0", name=op.f("ck_transactions_points_positive")),
        sa.ForeignKeyConstraint(
            ["hold_id"], ["holds.id"], name=op.f("fk_transactions_hold_id_holds")
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_transactions_member_id_members")
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_transactions_partner_id_partners")
        ),
        sa.ForeignKeyConstraint(
            ["rate_card_id"],
            ["rate_cards.id"],
            name=op.f("fk_transactions_rate_card_id_rate_cards"),
        ),
        sa.ForeignKeyConstraint(
            ["reverses"], ["transactions.id"], name=op.f("fk_transactions_reverses_transactions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transactions")),
    )
    op.create_index(
        "ix_transactions_member_occurred",
        "transactions",
        ["member_id", "occurred_at"],
        unique=False,
    )
    op.create_index(
        "ix_transactions_partner_posted", "transactions", ["partner_id", "posted_at"], unique=False
    )
    op.create_index("ix_transactions_posted", "transactions", ["posted_at"], unique=False)
    op.create_index(
        "ix_transactions_reverses",
        "transactions",
        ["reverses"],
        unique=False,
        postgresql_where=sa.text("reverses IS NOT NULL"),
        sqlite_where=sa.text("reverses IS NOT NULL"),
    )
    op.create_index(
        "uq_transactions_partner_kind_reference",
        "transactions",
        ["partner_id", "kind", "reference"],
        unique=True,
        postgresql_where=sa.text("reference IS NOT NULL AND hold_id IS NULL"),
        sqlite_where=sa.text("reference IS NOT NULL AND hold_id IS NULL"),
    )

    op.create_table(
        "lots",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("member_id", sa.String(length=40), nullable=False),
        sa.Column("origin_partner_id", sa.String(length=40), nullable=True),
        sa.Column("transaction_id", sa.String(length=40), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("is_deficit", sa.Boolean(), nullable=False),
        sa.CheckConstraint(
            "(is_deficit AND points = 0 AND remaining <= 0 AND expires_at IS NULL AND origin_partner_id IS NULL) OR (NOT is_deficit AND remaining >= 0 AND remaining <= points AND expires_at IS NOT NULL)",
            name=op.f("ck_lots_remaining_in_range"),
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_lots_member_id_members")
        ),
        sa.ForeignKeyConstraint(
            ["origin_partner_id"], ["partners.id"], name=op.f("fk_lots_origin_partner_id_partners")
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["transactions.id"],
            name=op.f("fk_lots_transaction_id_transactions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lots")),
    )
    op.create_index(
        "ix_lots_expiring",
        "lots",
        ["expires_at"],
        unique=False,
        postgresql_where=sa.text("remaining > 0"),
        sqlite_where=sa.text("remaining > 0"),
    )
    op.create_index(
        "ix_lots_member_open",
        "lots",
        ["member_id", "expires_at", "id"],
        unique=False,
        postgresql_where=sa.text("remaining > 0"),
        sqlite_where=sa.text("remaining > 0"),
    )
    op.create_index(
        "uq_lots_member_deficit",
        "lots",
        ["member_id"],
        unique=True,
        postgresql_where=sa.text("is_deficit"),
        sqlite_where=sa.text("is_deficit"),
    )

    op.create_table(
        "postings",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("transaction_id", sa.String(length=40), nullable=False),
        sa.Column("account_id", BIG_ID, nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("posted_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("points <> 0", name=op.f("ck_postings_points_nonzero")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_postings_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["transactions.id"],
            name=op.f("fk_postings_transaction_id_transactions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_postings")),
    )
    op.create_index(
        "ix_postings_account_posted", "postings", ["account_id", "posted_at"], unique=False
    )
    op.create_index("ix_postings_transaction", "postings", ["transaction_id"], unique=False)

    op.create_table(
        "lot_movements",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("transaction_id", sa.String(length=40), nullable=False),
        sa.Column("lot_id", BIG_ID, nullable=False),
        sa.Column("origin_partner_id", sa.String(length=40), nullable=True),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("points <> 0", name=op.f("ck_lot_movements_points_nonzero")),
        sa.ForeignKeyConstraint(["lot_id"], ["lots.id"], name=op.f("fk_lot_movements_lot_id_lots")),
        sa.ForeignKeyConstraint(
            ["origin_partner_id"],
            ["partners.id"],
            name=op.f("fk_lot_movements_origin_partner_id_partners"),
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["transactions.id"],
            name=op.f("fk_lot_movements_transaction_id_transactions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lot_movements")),
    )
    op.create_index("ix_lot_movements_lot", "lot_movements", ["lot_id"], unique=False)
    op.create_index(
        "ix_lot_movements_transaction", "lot_movements", ["transaction_id"], unique=False
    )
    _append_only_and_zero_sum()
    op.bulk_insert(
        sa.table("accounts", sa.column("id", sa.BigInteger), sa.column("kind", sa.String)),
        [{"id": i, "kind": k} for k, i in OPERATOR_ACCOUNTS.items()],
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("SELECT setval(pg_get_serial_sequence('accounts', 'id'), 3)")


APPEND_ONLY = ("transactions", "postings", "lot_movements", "rate_cards")


def _append_only_and_zero_sum() -> None:
    """Let the database itself refuse edits to the ledger and unbalanced transactions."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION coalition_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
                    USING ERRCODE = 'restrict_violation';
            END $$;
            """
        )
        for table in APPEND_ONLY:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE"
                f" ON {table} FOR EACH STATEMENT EXECUTE FUNCTION coalition_append_only()"
            )
        # Checked at commit, once per posting row: a transaction whose postings do not sum
        # to zero cannot be committed at all (django-hordak's approach).
        op.execute(
            """
            CREATE FUNCTION coalition_postings_zero_sum() RETURNS trigger LANGUAGE plpgsql AS $$
            DECLARE total bigint;
            BEGIN
                SELECT sum(points) INTO total FROM postings
                    WHERE transaction_id = NEW.transaction_id;
                IF total <> 0 THEN
                    RAISE EXCEPTION 'postings of transaction % sum to %, not zero',
                        NEW.transaction_id, total USING ERRCODE = 'check_violation';
                END IF;
                RETURN NULL;
            END $$;
            """
        )
        op.execute(
            "CREATE CONSTRAINT TRIGGER postings_zero_sum AFTER INSERT ON postings"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
            " EXECUTE FUNCTION coalition_postings_zero_sum()"
        )
    else:
        for table in APPEND_ONLY:
            for operation in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_append_only_{operation.lower()}"
                    f" BEFORE {operation} ON {table}"
                    f" BEGIN SELECT RAISE(ABORT, '{table} is append-only: {operation} refused'); END"
                )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS postings_zero_sum ON postings")
    for table in (
        "lot_movements",
        "postings",
        "lots",
        "transactions",
        "rate_cards",
        "holds",
        "api_keys",
        "partners",
        "members",
        "accounts",
    ):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS coalition_append_only()")
        op.execute("DROP FUNCTION IF EXISTS coalition_postings_zero_sum()")
