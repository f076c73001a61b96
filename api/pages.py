"""Keyset pagination at the edge, written once: the ``limit`` and ``cursor`` query parameters
every listing takes, the opaque cursor (:func:`encode_cursor`, :func:`decode_cursor`) and a
page's response (:func:`page_out`: ``data``, ``has_more``, ``next_cursor``). The pages
themselves are :mod:`coalition.pages`'."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import msgspec
from litestar.params import QueryParameter

from api.structs import LINE
from coalition.errors import ValidationFailed
from coalition.pages import MAX_PAGE, Page

#: ``?limit=``: rows per page, 1 to 500 (default 100).
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)]
#: ``?cursor=``: where the previous page stopped.
Cursor = Annotated[
    str | None,
    QueryParameter(max_length=200, pattern=LINE, description="`next_cursor` of the previous page."),
]

_CURSOR_PREFIX = "c1."

P = TypeVar("P", bound=msgspec.Struct)
T = TypeVar("T")


def encode_cursor(last_id: str | None) -> str | None:
    """An opaque cursor that continues after ``last_id``."""
    if last_id is None:
        return None
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, prefix: str) -> str | None:
    """The id a cursor continues after; ``validation`` for anything this API did not make."""
    if cursor is None:
        return None
    try:
        if not cursor.startswith(_CURSOR_PREFIX) or len(cursor) > 200:
            raise ValueError
        raw = cursor.removeprefix(_CURSOR_PREFIX)
        last_id = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("ascii")
    except ValueError:
        raise ValidationFailed.at("query.cursor", "not a cursor this API returned") from None
    if not last_id.startswith(f"{prefix}_") or not last_id.isascii() or not last_id.isprintable():
        raise ValidationFailed.at("query.cursor", "not a cursor this API returned")
    return last_id


def page_out(struct: type[P], page: Page[T], out: Callable[[T], Any]) -> P:
    """A page as the response ``struct`` (``data``, ``has_more``, ``next_cursor``), each row
    through ``out``."""
    return struct(
        data=[out(row) for row in page.rows],
        has_more=page.has_more,
        next_cursor=encode_cursor(page.last_id),
    )
