"""A member's whole coalition history opens through a link the operator mints: a member link
(and its session) may name no partner (partners/signin.py); a link a partner mints keeps naming
that partner, and shows only that partner's dealings with the member

Revision ID: 0013_member_links
Revises: 0012_close_lines_by_id
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_member_links"
down_revision = "0012_close_lines_by_id"
branch_labels = None
depends_on = None

_STAFF = "(role IN ('operator', 'finance') AND partner_id IS NULL AND member_id IS NULL)"
_PARTNER = "(role = 'partner' AND partner_id IS NOT NULL AND member_id IS NULL)"
WHO_BEFORE = f"{_STAFF} OR {_PARTNER} OR (role = 'member' AND partner_id IS NOT NULL AND member_id IS NOT NULL)"
WHO_AFTER = f"{_STAFF} OR {_PARTNER} OR (role = 'member' AND member_id IS NOT NULL)"
TABLES = ("sign_in_links", "console_sessions")


def _who_name(table: str) -> str:
    """The name the ``who`` check has in the database (0007 made it under the naming
    convention, so it reads ``ck_<table>_ck_<table>_who``)."""
    names = [
        str(check["name"])
        for check in sa.inspect(op.get_bind()).get_check_constraints(table)
        if str(check["name"]).endswith("_who")
    ]
    if len(names) != 1:
        raise RuntimeError(f"{table}: expected one 'who' check, found {names}")
    return names[0]


def _replace(who: str) -> None:
    for table in TABLES:
        name = op.f(_who_name(table))
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(name, type_="check")
            batch.create_check_constraint(name, sa.text(who))


def upgrade() -> None:
    _replace(WHO_AFTER)


def downgrade() -> None:
    # The operator's member links and their sessions cannot exist before this revision.
    for table in TABLES:
        op.execute(f"DELETE FROM {table} WHERE role = 'member' AND partner_id IS NULL")  # noqa: S608
    _replace(WHO_BEFORE)
