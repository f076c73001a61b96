"""A row as the typed result the domain returns (issue 23, docs/architecture.md decision 24).

The domain answers with msgspec structs (a transaction, a rate card, a statement's summary, a
payment run...), most of whose fields are a row's columns under the same names: :func:`row_as`
copies those by name, so each field is named once, in its struct, and the caller states only
the fields it computes (an amount as a decimal string, a masked IBAN...).
"""

from __future__ import annotations

from typing import Any, TypeVar

from msgspec import Struct

S = TypeVar("S", bound=Struct)


def row_as(struct: type[S], row: object, **computed: Any) -> S:
    """``struct`` with each field the ``computed`` value of that name, or else ``row``'s
    attribute of that name (values are taken as they are: the struct's types are what the
    columns hold)."""
    return struct(
        **{
            name: computed[name] if name in computed else getattr(row, name)
            for name in struct.__struct_fields__
        }
    )
