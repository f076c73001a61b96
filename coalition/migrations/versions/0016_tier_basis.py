"""The tier basis on the member row: ``tier_day``, ``tier_since_day`` and ``tier_points`` (the
qualifying points of the days ``tier_since_day`` to ``tier_day``, the day of the member's
latest earn or earn reversal), kept by the write that changes the balance; ``qualifying_days``
goes (coalition/ledger/tiers.py, docs/recipes.md "Tiers").

The columns are filled from the transactions, for the window the settings name
(``COALITION_TIER_WINDOW_DAYS``; a row whose window is another width still reads right, and
is set to the new width by the member's next earn). Before it commits, the migration checks
its result against ``qualifying_days`` (kept by the old write path, independently of the
transactions): each member's ``tier_day`` is the latest day it has, ``tier_points`` the sum of
its days in the window; it refuses, changing nothing, if any member differs. The downgrade
fills ``qualifying_days`` from the transactions again and drops the columns.

It also drops the foreign keys from the ledger's hot write tables to the hot parents, the
partner and its rate card (:data:`_HOT_PARENT_KEYS`): a key's check takes a ``FOR KEY SHARE``
lock on the parent row per insert, which writes WAL and, with many writers of one partner,
makes a MultiXact per lock (docs/invariants.md, "Foreign keys", has the measured cost).
``coalition check`` verifies those references instead. SQLite has no ``DROP CONSTRAINT``: its
table definitions lose (and, down, regain) the clause in place, as SQLite documents for
removing a foreign key (``writable_schema``, the schema version bumped, an integrity check).

Revision ID: 0016_tier_basis
Revises: 0015_transfers
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

from coalition.config import load_settings

revision = "0016_tier_basis"
down_revision = "0015_transfers"
branch_labels = None
depends_on = None

#: The UTC day (days since 1970-01-01) a transaction occurred on, per dialect (SQLite stores
#: naive UTC text).
_DAY_OF = {
    "postgresql": "CAST(FLOOR(EXTRACT(EPOCH FROM occurred_at) / 86400) AS INTEGER)",
    "sqlite": "CAST(strftime('%s', occurred_at) AS INTEGER) / 86400",
}
_SIGNED = "CASE WHEN kind = 'earn' THEN points ELSE -points END"
_COUNTS = "kind IN ('earn', 'earn_reversal')"


#: (table, constraint, column, parent): the keys to a hot parent row that go.
_HOT_PARENT_KEYS = (
    ("transactions", "fk_transactions_partner_id_partners", "partner_id", "partners"),
    ("transactions", "fk_transactions_rate_card_id_rate_cards", "rate_card_id", "rate_cards"),
    ("lots", "fk_lots_origin_partner_id_partners", "origin_partner_id", "partners"),
    (
        "lot_movements",
        "fk_lot_movements_origin_partner_id_partners",
        "origin_partner_id",
        "partners",
    ),
    ("holds", "fk_holds_partner_id_partners", "partner_id", "partners"),
)


def _clause(name: str, column: str, parent: str) -> str:
    return f"CONSTRAINT {name} FOREIGN KEY({column}) REFERENCES {parent} (id)"


def _sqlite_tables(change: dict[str, list[tuple[str, str, str]]], *, drop: bool) -> None:
    """Drop (or add back) foreign key clauses in SQLite's stored table definitions."""
    conn = op.get_bind()
    version = int(conn.exec_driver_sql("PRAGMA schema_version").scalar_one())
    conn.exec_driver_sql("PRAGMA writable_schema=ON")
    for table, keys in change.items():
        sql = conn.execute(
            sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t"),
            {"t": table},
        ).scalar_one()
        for name, column, parent in keys:
            clause = _clause(name, column, parent)
            if drop:
                sql, found = re.subn(r",\s*" + re.escape(clause), "", sql)
                if found != 1:
                    raise RuntimeError(f"0016_tier_basis: {table} has no {name}")
            else:
                end = sql.rstrip().rindex(")")
                sql = f"{sql[:end].rstrip()}, \n\t{clause}\n)"
        conn.execute(
            sa.text("UPDATE sqlite_master SET sql = :sql WHERE type = 'table' AND name = :t"),
            {"sql": sql, "t": table},
        )
    conn.exec_driver_sql(f"PRAGMA schema_version={version + 1}")
    conn.exec_driver_sql("PRAGMA writable_schema=OFF")
    if conn.exec_driver_sql("PRAGMA integrity_check").scalar_one() != "ok":
        raise RuntimeError("0016_tier_basis: SQLite's integrity check failed")


def _hot_parent_keys(*, drop: bool) -> None:
    if op.get_bind().dialect.name == "sqlite":
        by_table: dict[str, list[tuple[str, str, str]]] = {}
        for table, name, column, parent in _HOT_PARENT_KEYS:
            by_table.setdefault(table, []).append((name, column, parent))
        _sqlite_tables(by_table, drop=drop)
        return
    for table, name, column, parent in _HOT_PARENT_KEYS:
        if drop:
            op.drop_constraint(name, table, type_="foreignkey")
        else:
            op.create_foreign_key(name, table, parent, [column], ["id"])


def _days() -> str:
    """Each member's qualifying points per UTC day, from the transactions."""
    day = _DAY_OF[op.get_bind().dialect.name]
    return (
        f"SELECT member_id, {day} AS day, SUM({_SIGNED}) AS points"  # noqa: S608 (constants)
        f" FROM transactions WHERE {_COUNTS} GROUP BY member_id, {day}"
    )


def upgrade() -> None:
    window = load_settings().tier_window_days
    op.add_column("members", sa.Column("tier_day", sa.Integer(), nullable=True))
    op.add_column("members", sa.Column("tier_since_day", sa.Integer(), nullable=True))
    op.add_column(
        "members", sa.Column("tier_points", sa.BigInteger(), nullable=False, server_default="0")
    )
    # The window is bound, not formatted: an int from the settings.
    op.get_bind().execute(
        sa.text(
            "UPDATE members SET tier_day = x.day, tier_since_day = x.day - :w + 1,"  # noqa: S608 (constants)
            " tier_points = x.points FROM (SELECT d.member_id, l.day,"
            " SUM(CASE WHEN d.day >= l.day - :w + 1 THEN d.points ELSE 0 END) AS points"
            f" FROM ({_days()}) d JOIN (SELECT member_id, MAX(day) AS day FROM ({_days()}) a"
            " GROUP BY member_id) l ON l.member_id = d.member_id GROUP BY d.member_id, l.day) x"
            " WHERE members.id = x.member_id"
        ),
        {"w": window},
    )
    _refuse_if_different()
    op.drop_table("qualifying_days")
    _hot_parent_keys(drop=True)


# Members whose new basis differs from what ``qualifying_days`` says: the latest day, and the
# sum of the days from tier_since_day to tier_day.
_DIFFERENT = """
SELECT count(*) FROM members m
LEFT JOIN (SELECT member_id, MAX(day) AS day FROM qualifying_days GROUP BY member_id) l
  ON l.member_id = m.id
WHERE (m.tier_day IS NULL) <> (l.day IS NULL) OR m.tier_day <> l.day
  OR m.tier_points <> (SELECT COALESCE(SUM(q.points), 0) FROM qualifying_days q
      WHERE q.member_id = m.id AND q.day >= m.tier_since_day AND q.day <= m.tier_day)
"""


def _refuse_if_different() -> None:
    count = int(op.get_bind().execute(sa.text(_DIFFERENT)).scalar_one() or 0)
    if count:
        raise RuntimeError(
            f"0016_tier_basis: {count} members' tier basis differs from qualifying_days;"
            " nothing was changed"
        )


def downgrade() -> None:
    _hot_parent_keys(drop=False)
    op.create_table(
        "qualifying_days",
        sa.Column("member_id", sa.String(68), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name="fk_qualifying_days_member_id_members"
        ),
        sa.PrimaryKeyConstraint("member_id", "day", name="pk_qualifying_days"),
    )
    op.execute(f"INSERT INTO qualifying_days (member_id, day, points) {_days()}")
    # Not a batch: SQLite (3.35 and later) drops a column in place, where a batch would copy
    # the table that others' foreign keys point at.
    for column in ("tier_points", "tier_since_day", "tier_day"):
        op.drop_column("members", column)
