"""What a signed earn writes gets smaller: its stored response and one of its transfer's
indexes (docs/benchmarks.md, "The ledger's writes").

- A response may be the transaction it renders: ``response_transaction_id`` (one of it and
  ``response_body``, never both). A ``POST`` that answers with a ledger transaction (an earn, a
  burn, a capture, a reversal, a bonus, an adjustment) stores that transaction's id instead of
  the body's bytes, and a replay renders the transaction's row again (api/idempotency.py); the
  stored response was the largest row an earn wrote (docs/benchmarks.md). Rows stored before
  keep their bodies.
- ``request_hash`` holds the SHA-256's 32 bytes instead of its 64 hex digits.
- ``state``, ``locked_until`` and ``created_at`` go: left from the lease-based claim that the
  transaction-scoped one replaced, every row is ``done`` with ``locked_until = created_at =
  expires_at - 24 h``. A ``running`` row (never written since) holds no response and frees its
  key once its lease has passed: such rows are deleted.

- ``ix_transactions_partner_posted`` (a partner's transfers by time) goes: the partner listing,
  the one query that filters a partner's transfers by ``posted_at``, pages by id on
  ``ix_transactions_partner_id`` and takes a time window through ``ix_transactions_posted``
  (its plans are the same without it, EXPLAIN at 1M transfers: docs/benchmarks.md); every
  transfer paid a leaf insert into it (about 100 bytes of WAL).

The upgrade checks its result: every stored response has its body or its transaction, every
hash its 32 bytes. The downgrade writes the body of every row that names a transaction (the
rendering of a transaction as it stands at this revision:
:func:`coalition.migrations.renderings.transaction_body`, the API's ``TransactionOut``), refuses if one is left without a body, and restores the columns.

Revision ID: 0018_leaner_signed_writes
Revises: 0017_request_rows_unkeyed
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from coalition.db import UTCDateTime
from coalition.migrations.renderings import TRANSACTIONS, transaction_body

revision = "0018_leaner_signed_writes"
down_revision = "0017_request_rows_unkeyed"
branch_labels = None
depends_on = None

_CHECK = "ck_idempotency_keys_one_response"

_STATE = "ck_idempotency_keys_state"
#: A row's ``created_at``: its ``expires_at`` less the retention, 24 hours (SQLite stores
#: naive UTC text).
_CREATED = {
    "postgresql": "expires_at - interval '24 hours'",
    "sqlite": "strftime('%Y-%m-%d %H:%M:%f000', expires_at, '-24 hours')",
}

#: Rows without a response, or whose hash is not ``{length}`` long (bytes or hex digits).
_WRONG = "SELECT count(*) FROM idempotency_keys WHERE {without} OR length(request_hash) <> {length}"
_WITHOUT_AFTER = "(response_body IS NULL AND response_transaction_id IS NULL)"
_WITHOUT_BEFORE = "response_body IS NULL"


def upgrade() -> None:
    conn = op.get_bind()
    conn.execute(sa.text("DELETE FROM idempotency_keys WHERE state = 'running'"))
    if conn.dialect.name == "sqlite":
        _unhex_on_sqlite()
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_constraint(op.f(_STATE), type_="check")
        for column in ("state", "locked_until", "created_at"):
            batch.drop_column(column)
        batch.add_column(sa.Column("response_transaction_id", sa.String(40), nullable=True))
        batch.create_check_constraint(
            op.f(_CHECK), sa.text("response_body IS NULL OR response_transaction_id IS NULL")
        )
        batch.alter_column(
            "request_hash",
            type_=sa.LargeBinary(32),
            postgresql_using="decode(request_hash, 'hex')",
        )
    _refuse_if_wrong("0018 upgrade", _WITHOUT_AFTER, 32)
    op.drop_index("ix_transactions_partner_posted", table_name="transactions")


def _unhex_on_sqlite() -> None:
    """SQLite (whose values keep their type, and which has no ``unhex`` before 3.41): each
    row's hex ``request_hash`` as its bytes, before the column's type changes (the copy of the
    table that changes it casts the value, which leaves bytes as they are)."""
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT owner, key, request_hash FROM idempotency_keys")).all()
    if rows:
        conn.execute(
            sa.text("UPDATE idempotency_keys SET request_hash = :h WHERE owner = :o AND key = :k"),
            [{"o": owner, "k": key, "h": bytes.fromhex(digest)} for owner, key, digest in rows],
        )


def _refuse_if_wrong(step: str, without: str, length: int) -> None:
    wrong = _WRONG.format(without=without, length=length)
    count = int(op.get_bind().execute(sa.text(wrong)).scalar_one() or 0)
    if count:
        raise RuntimeError(
            f"{step}: {count} stored responses have neither body nor transaction,"
            f" or a request hash not {length} long; nothing was changed"
        )


# The tables as this revision reads them (not the models, which may change later).
_KEYS = sa.table(
    "idempotency_keys",
    sa.column("owner", sa.String()),
    sa.column("key", sa.String()),
    sa.column("response_body", sa.LargeBinary()),
    sa.column("response_transaction_id", sa.String()),
)


def downgrade() -> None:
    op.create_index("ix_transactions_partner_posted", "transactions", ["partner_id", "posted_at"])
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(_KEYS.c.owner, _KEYS.c.key, *TRANSACTIONS.c).join(
            TRANSACTIONS, TRANSACTIONS.c.id == _KEYS.c.response_transaction_id
        )
    ).all()
    write = (
        sa.update(_KEYS)
        .where(_KEYS.c.owner == sa.bindparam("o"), _KEYS.c.key == sa.bindparam("k"))
        .values(response_body=sa.bindparam("b"), response_transaction_id=None)
    )
    if rows:
        conn.execute(write, [{"o": r.owner, "k": r.key, "b": transaction_body(r)} for r in rows])
    left = "SELECT count(*) FROM idempotency_keys WHERE response_transaction_id IS NOT NULL"
    if int(conn.execute(sa.text(left)).scalar_one() or 0):
        raise RuntimeError("0018 downgrade: a stored response names a transaction that is gone")
    if conn.dialect.name == "sqlite":  # as in the upgrade: the value first, then the type
        op.execute("UPDATE idempotency_keys SET request_hash = lower(hex(request_hash))")
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_constraint(op.f(_CHECK), type_="check")
        batch.drop_column("response_transaction_id")
        for column in ("state", "locked_until", "created_at"):
            kind = sa.String(8) if column == "state" else UTCDateTime()
            batch.add_column(sa.Column(column, kind, nullable=True))
        batch.alter_column(
            "request_hash", type_=sa.String(64), postgresql_using="encode(request_hash, 'hex')"
        )
    _restore_lease_columns()
    _refuse_if_wrong("0018 downgrade", _WITHOUT_BEFORE, 64)


def _restore_lease_columns() -> None:
    """``state``, ``created_at`` and ``locked_until`` as the claim of 0017 writes them."""
    created = _CREATED[op.get_bind().dialect.name]
    op.execute(
        f"UPDATE idempotency_keys SET state = 'done', created_at = {created},"  # noqa: S608 (constants)
        f" locked_until = {created}"
    )
    with op.batch_alter_table("idempotency_keys") as batch:
        for column in ("state", "locked_until", "created_at"):
            batch.alter_column(column, nullable=False)
        batch.create_check_constraint(op.f(_STATE), sa.text("state IN ('running', 'done')"))
