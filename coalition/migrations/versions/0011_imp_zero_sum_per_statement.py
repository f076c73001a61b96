"""Zero-sum postings checked once per statement, set-based, instead of once per posting row
at commit: an AFTER INSERT statement trigger with a transition table sums the postings of
every transaction the statement wrote postings for (PostgreSQL)

Each of a transaction's postings is written in the same statement (every write path does), so
a statement that leaves any of its transactions unbalanced is refused as it runs; postings
are append-only, so what a statement left balanced stays so. Before, a deferred constraint
trigger ran one ``SELECT sum(...)`` per posting row at commit: two per earn, 10,000 for a
batch of a bulk import (docs/benchmarks.md, "Bulk import").

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
            SELECT p.transaction_id, sum(p.points) AS total INTO bad
                FROM postings p
                WHERE p.transaction_id IN (SELECT transaction_id FROM new_postings)
                GROUP BY p.transaction_id
                HAVING sum(p.points) <> 0
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
