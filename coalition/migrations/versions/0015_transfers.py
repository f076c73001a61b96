"""The ledger as transfers: each transaction row names the account it debits and the account
it credits (it moves its positive ``points`` from one to the other); the ``postings`` table
and its zero-sum trigger go

Every transaction had exactly two postings, ``-points`` on one account and ``+points`` on
another, so the row can carry both legs and balances by construction: invariant 1 becomes
structural (``points > 0``, ``debit_account_id <> credit_account_id``; on SQLite, which cannot
add a CHECK to an existing table, a trigger refuses the second) plus "each account's balance =
its credits less its debits", which ``coalition check`` verifies. The two columns have no
foreign key: a key to a partner's account (a hot parent, one row per partner) would take a
row lock on it per insert; ``coalition check`` verifies each names an account of the right
role for its kind instead (docs/invariants.md).

The migration checks its own result before it commits, and refuses (rolling everything back)
if anything differs: every transaction had exactly two legs of ``-points`` and ``+points``;
every account's balance (its credits less its debits) equals the sum of its postings; every
member's balance equals its transfers and its open lots; the issued statements (ids, hashes,
documents) are untouched. The downgrade writes the postings back from the transfers.

Revision ID: 0015_transfers
Revises: 0014_payments
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

from coalition.db import UTCDateTime

revision = "0015_transfers"
down_revision = "0014_payments"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Each transfer's two legs, as (account, signed points): what the postings were.
_LEGS = """
SELECT credit_account_id AS account_id, points FROM transactions
UNION ALL SELECT debit_account_id, -points FROM transactions
"""
_TRANSFER_BALANCES = (
    f"SELECT account_id, SUM(points) AS total FROM ({_LEGS}) legs GROUP BY account_id"  # noqa: S608 (constants)
)
_POSTING_BALANCES = "SELECT account_id, SUM(points) AS total FROM postings GROUP BY account_id"
# Transactions whose postings are not exactly one -points and one +points leg.
_NOT_TWO_LEGS = """
SELECT count(*) FROM transactions t WHERE
  (SELECT count(*) FROM postings p WHERE p.transaction_id = t.id) <> 2
  OR NOT EXISTS (SELECT 1 FROM postings p WHERE p.transaction_id = t.id AND p.points = t.points)
  OR NOT EXISTS (SELECT 1 FROM postings p WHERE p.transaction_id = t.id AND p.points = -t.points)
"""
_MEMBER_MISMATCHES = f"""
SELECT count(*) FROM members m
LEFT JOIN ({_TRANSFER_BALANCES}) b ON b.account_id = m.account_id
LEFT JOIN (SELECT member_id, SUM(remaining) AS total FROM lots GROUP BY member_id) l
  ON l.member_id = m.id
WHERE m.balance <> COALESCE(b.total, 0) OR m.balance <> COALESCE(l.total, 0)
"""  # noqa: S608 (built from constants)


def _one(sql: str) -> int:
    return int(op.get_bind().execute(sa.text(sql)).scalar_one() or 0)


def _refuse_if(count: int, what: str) -> None:
    if count:
        raise RuntimeError(f"0015_transfers: {count} {what}; nothing was changed")


def _statements_digest() -> str:
    """A digest of every statement's id, hashes and document: what no migration may change."""
    digest = hashlib.sha256()
    rows = op.get_bind().execute(
        sa.text("SELECT id, content_sha256, issued_sha256, document FROM statements ORDER BY id")
    )
    for row in rows:
        digest.update(repr(tuple(row)).encode())
    return digest.hexdigest()


def _balances_differ() -> int:
    """Accounts whose transfers' balance differs from their postings' sum."""
    return _one(
        f"SELECT count(*) FROM ({_POSTING_BALANCES}) p FULL OUTER JOIN ({_TRANSFER_BALANCES}) t"  # noqa: S608 (constants)
        " ON t.account_id = p.account_id WHERE p.total IS DISTINCT FROM t.total"
        if op.get_bind().dialect.name == "postgresql"
        else f"SELECT count(*) FROM ({_POSTING_BALANCES}) p FULL OUTER JOIN ({_TRANSFER_BALANCES}) t"  # noqa: S608 (constants)
        " ON t.account_id = p.account_id WHERE p.total IS NOT t.total"
    )


def _append_only(enabled: bool) -> None:
    """Migration 0001's append-only guard of ``transactions``, lifted while the columns are
    filled in (the only UPDATE that table ever sees) and put back."""
    if op.get_bind().dialect.name == "postgresql":
        state = "ENABLE" if enabled else "DISABLE"
        op.execute(f"ALTER TABLE transactions {state} TRIGGER transactions_append_only")
    elif enabled:
        op.execute(
            "CREATE TRIGGER transactions_append_only_update BEFORE UPDATE ON transactions"
            " BEGIN SELECT RAISE(ABORT, 'transactions is append-only: UPDATE refused'); END"
        )
    else:
        op.execute("DROP TRIGGER transactions_append_only_update")


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    _refuse_if(_one(_NOT_TWO_LEGS), "transactions without exactly two opposite legs")
    statements = _statements_digest()
    if postgres:
        op.add_column("transactions", sa.Column("debit_account_id", BIG_ID, nullable=True))
        op.add_column("transactions", sa.Column("credit_account_id", BIG_ID, nullable=True))
    else:
        # SQLite adds a NOT NULL column only with a default; every row is filled in below.
        for column in ("debit_account_id", "credit_account_id"):
            op.execute(f"ALTER TABLE transactions ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
    _append_only(False)
    op.execute(
        """
        UPDATE transactions SET
          debit_account_id = (SELECT p.account_id FROM postings p
                              WHERE p.transaction_id = transactions.id AND p.points < 0),
          credit_account_id = (SELECT p.account_id FROM postings p
                               WHERE p.transaction_id = transactions.id AND p.points > 0)
        """
    )
    _append_only(True)
    if postgres:
        op.alter_column("transactions", "debit_account_id", nullable=False)
        op.alter_column("transactions", "credit_account_id", nullable=False)
        op.create_check_constraint(
            "ck_transactions_two_accounts",
            "transactions",
            "debit_account_id <> credit_account_id",
        )
    else:
        op.execute(
            "CREATE TRIGGER transactions_two_accounts BEFORE INSERT ON transactions"
            " WHEN NEW.debit_account_id = NEW.credit_account_id"
            " BEGIN SELECT RAISE(ABORT, 'a transfer debits and credits two accounts'); END"
        )
    _refuse_if(_balances_differ(), "accounts whose transfers differ from their postings")
    _refuse_if(_one(_MEMBER_MISMATCHES), "members whose balance is not their transfers and lots")
    if postgres:
        op.execute("DROP TRIGGER postings_zero_sum ON postings")
        op.execute("DROP FUNCTION coalition_postings_zero_sum()")
    op.drop_table("postings")
    _refuse_if(_statements_digest() != statements, "statements changed")


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
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
    op.create_index("ix_postings_account_posted", "postings", ["account_id", "posted_at"])
    op.create_index("ix_postings_transaction", "postings", ["transaction_id"])
    op.execute(
        """
        INSERT INTO postings (transaction_id, account_id, points, posted_at)
        SELECT id, debit_account_id, -points, posted_at FROM transactions
        UNION ALL SELECT id, credit_account_id, points, posted_at FROM transactions
        """
    )
    _refuse_if(_balances_differ(), "accounts whose postings differ from their transfers")
    if postgres:
        op.execute(
            "CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE OR TRUNCATE"
            " ON postings FOR EACH STATEMENT EXECUTE FUNCTION coalition_append_only()"
        )
        op.execute(
            """
            CREATE FUNCTION coalition_postings_zero_sum() RETURNS trigger LANGUAGE plpgsql AS $$
            DECLARE bad record;
            BEGIN
                SELECT transaction_id, sum(points) AS total INTO bad
                    FROM new_postings
                    GROUP BY transaction_id
                    HAVING sum(points) <> 0
                    LIMIT 1;
                IF FOUND THEN
                    RAISE EXCEPTION 'postings of transaction % sum to %, not zero',
                        bad.transaction_id, bad.total USING ERRCODE = 'check_violation';
                END IF;
                RETURN NULL;
            END $$;
            """
        )
        op.execute(
            "CREATE TRIGGER postings_zero_sum AFTER INSERT ON postings"
            " REFERENCING NEW TABLE AS new_postings FOR EACH STATEMENT"
            " EXECUTE FUNCTION coalition_postings_zero_sum()"
        )
        op.drop_constraint("ck_transactions_two_accounts", "transactions", type_="check")
        op.drop_column("transactions", "credit_account_id")
        op.drop_column("transactions", "debit_account_id")
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER postings_append_only_{operation.lower()}"
                f" BEFORE {operation} ON postings"
                f" BEGIN SELECT RAISE(ABORT, 'postings is append-only: {operation} refused'); END"
            )
        op.execute("DROP TRIGGER transactions_two_accounts")
        op.execute("ALTER TABLE transactions DROP COLUMN credit_account_id")
        op.execute("ALTER TABLE transactions DROP COLUMN debit_account_id")
