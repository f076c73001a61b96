"""The ledger's tables as Core objects and the bounds shared by its modules."""

from __future__ import annotations

from typing import cast

from sqlalchemy import (
    Table,
    bindparam,
    select,
)

from coalition.models import (
    Hold,
    Lot,
    Member,
    Transaction,
)

# The hot path runs pre-built Core statements on the tables: building an ORM-enabled statement
# on every call cost several times the Python the database driver needs to run it (about 1.6x
# the single-operation throughput; docs/benchmarks.md).
_MEMBERS = cast("Table", Member.__table__)
_TRANSACTIONS = cast("Table", Transaction.__table__)
_LOTS = cast("Table", Lot.__table__)
_MEMBER_STATE = select(_MEMBERS.c.balance, _MEMBERS.c.held).where(
    _MEMBERS.c.id == bindparam("member")
)
_HOLDS = cast("Table", Hold.__table__)

#: Rows one bulk statement may touch (members locked, credits written): bounds its parameters.
BULK_MAX = 5000
#: Members or holds one expiry job run handles before it commits and returns.
EXPIRY_BATCH = 500
