"""Security: member ids up to their documented 68 characters; the audit log (append-only);
used-up POST signatures; rate-limit counters

Revision ID: 0005_security
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_security"
down_revision = "0004_settlement"
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


#: The audit log is append-only: the database itself refuses to change or delete an event.
_APPEND_ONLY_PG = """
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only';
END $$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
"""
_APPEND_ONLY_SQLITE = (
    "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END",
    "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END",
)


def _audit_events() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("action", sa.String(1024), nullable=False),
        sa.Column("source_address", sa.String(64), nullable=True),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(40), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_key_id_id", "audit_events", ["key_id", "id"])
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_APPEND_ONLY_PG)
    else:
        for statement in _APPEND_ONLY_SQLITE:
            op.execute(statement)


def _signature_uses() -> None:
    # Replay protection for POSTs (partners/replay.py): a signature value is used up.
    op.create_table(
        "signature_uses",
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("signature_sha256", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name="fk_signature_uses_key_id_api_keys"
        ),
        sa.PrimaryKeyConstraint("key_id", "signature_sha256", name="pk_signature_uses"),
    )
    op.create_index("ix_signature_uses_expires", "signature_uses", ["expires_at"])


def _rate_counters() -> None:
    # Rate limits shared by all API processes (partners/ratelimit.py).
    op.create_table(
        "rate_counters",
        sa.Column("bucket", sa.String(80), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", "window_start", name="pk_rate_counters"),
    )


def upgrade() -> None:
    _resize(40, 68)
    _audit_events()
    _signature_uses()
    _rate_counters()


def downgrade() -> None:
    op.drop_table("rate_counters")
    op.drop_table("signature_uses")
    op.drop_table("audit_events")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION audit_events_append_only()")
    _resize(68, 40)
