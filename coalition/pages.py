"""Keyset pagination, the one way every listing pages (transactions, partners, statements,
periods, the reconciliation queue, the audit log).

A page is "the next ``limit`` rows after this one", ordered by the time-ordered primary key
(``txn_...``, ``prt_...``: docs/architecture.md, decision 7), newest first: rows inserted while a
client pages never shift, duplicate or skip the rows it has not seen yet, and every page costs
one index range scan however deep it is. One row more than the page is read to know whether a
next page exists. The API turns a page's :attr:`Page.last_id` into its opaque cursor
(:mod:`api.pages`).
"""

from __future__ import annotations

from typing import Any, Generic, NamedTuple, TypeVar, cast

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from coalition.errors import ValidationFailed, invariant

#: The largest page any listing returns.
MAX_PAGE = 500


T = TypeVar("T")


class Page(NamedTuple, Generic[T]):
    """Rows of one page, newest first; ``has_more`` says whether a next page exists."""

    rows: list[T]
    has_more: bool

    @property
    def last_id(self) -> str | None:
        """The id the next page continues after (the oldest row of this page), when there is
        more."""
        if not self.has_more or not self.rows:
            return None
        last_id = getattr(self.rows[-1], "id", None)
        invariant(isinstance(last_id, str), "a page's rows have string ids")
        return cast(str, last_id)


def check_limit(limit: int) -> None:
    """``validation`` (the field ``limit``) unless 1 <= ``limit`` <= :data:`MAX_PAGE`."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationFailed.at("limit", f"from 1 to {MAX_PAGE}")


def newest_first(
    session: Session,
    query: Select[T],
    id_column: InstrumentedAttribute[str],
    *,
    before_id: str | None,
    limit: int,
    expunge: bool = False,
) -> Page[T]:
    """The page of ``query``'s rows by ``id_column`` descending that follows ``before_id``
    (none: the first page). ``expunge``: the rows leave the session (read-only results)."""
    if before_id is not None:
        query = query.where(id_column < before_id)
    return first_rows(session, query.order_by(id_column.desc()), limit, expunge=expunge)


def first_rows(session: Session, query: Select[T], limit: int, *, expunge: bool = False) -> Page[T]:
    """The first ``limit`` rows of an ordered ``query`` (already past the previous page), and
    whether more follow."""
    check_limit(limit)
    rows: list[Any] = list(session.scalars(query.limit(limit + 1)))
    if expunge:
        for row in rows:
            session.expunge(row)
    return Page(rows[:limit], len(rows) > limit)
