"""Zero-sum postings checked once per statement, set-based, instead of once per posting row
at commit: an AFTER INSERT statement trigger whose transition table holds the statement's new
postings refuses the statement if those of any one transaction do not sum to zero (PostgreSQL)

Why that is the same guarantee (invariant 1, docs/invariants.md): postings are append-only
(no UPDATE, DELETE or TRUNCATE: their own trigger), and every statement that ever wrote
postings added zero to each of its transactions (this trigger, and the deferred one before
it for the postings already there), so a transaction's postings sum to zero after every
statement, committed or not, however statements of concurrent transactions interleave (sums
add). It asks one thing more of the writers: a transaction's legs are written in one
statement, which every write path does. Before, a deferred constraint trigger ran one
``SELECT sum(...)`` over the postings per posting row at commit: two per earn, 10,000 for a
batch of a bulk import (docs/benchmarks.md, "Bulk import"); now no index is read at all.

Revision ID: 0011_imp_zero_sum_per_statement
Revises: 0010_webhook_attempts
"""

from __future__ import annotations

from alembic import op

revision = "0011_imp_zero_sum_per_statement"
down_revision = "0010_webhook_attempts"
branch_labels = None
depends_on = None

_PER_ROW = """
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


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER postings_zero_sum ON postings")
    op.execute("DROP FUNCTION coalition_postings_zero_sum()")
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


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER postings_zero_sum ON postings")
    op.execute("DROP FUNCTION coalition_postings_zero_sum()")
    op.execute(_PER_ROW)
    op.execute(
        "CREATE CONSTRAINT TRIGGER postings_zero_sum AFTER INSERT ON postings"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
        " EXECUTE FUNCTION coalition_postings_zero_sum()"
    )
