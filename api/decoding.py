"""The strict decoder of request bodies and query times: no type coercion, no unknown fields,
no repeated keys, time zones required; msgspec's errors become a ``validation`` problem naming
the field (``$.amount``). The shapes it decodes into are in :mod:`api.structs`.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, TypeVar

import msgspec

from api.structs import AwareTime, explain
from coalition.errors import ValidationFailed, required
from coalition.times import client_time

T = TypeVar("T")

_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_AT = re.compile(r"^(?P<message>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.DOTALL)
_FIELD = re.compile(r"(missing required field|contains unknown field) `(?P<name>[^`]+)`")


def _field_error(exc: msgspec.ValidationError) -> dict[str, str]:
    text = str(exc)
    match = required(_AT.match(text), f"msgspec's error has no location: {text}")
    message, path = explain(match["message"]), match["path"] or "$"
    field = _FIELD.search(message)
    if field is not None:
        path = f"{path}.{field['name']}"
    return {"path": path, "message": message}


class _DuplicateKey(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _DuplicateKey(name)
            seen.add(name)
    return members


def _check_unique_keys(body: bytes) -> None:
    """``validation`` when an object of ``body`` repeats a key: msgspec (like most decoders)
    keeps the last, while a partner's own validator may have read the first."""
    try:
        json.loads(body, object_pairs_hook=_refuse_duplicate_keys)
    except _DuplicateKey as dup:
        raise ValidationFailed.at(
            f"$.{dup.name}" if _PLAIN_NAME.fullmatch(dup.name) else "$",
            "this key appears more than once in an object",
        ) from None
    except (ValueError, RecursionError):
        raise ValidationFailed.at("$", "not valid JSON") from None


def decode(body: bytes, type_: type[T], *, empty_as_object: bool = False) -> T:
    """Decode a JSON request body strictly into ``type_``; :class:`ValidationFailed` if not
    (a repeated key, nesting beyond the decoder's depth and non-UTF-8 bytes included). With
    ``empty_as_object`` no body at all stands for ``{}``; white space alone is not JSON."""
    if not body and empty_as_object:
        body = b"{}"  # no body at all: an endpoint whose fields are all optional
    elif not body.strip():
        raise ValidationFailed.at("$", "a JSON object is required")
    try:
        value = msgspec.json.decode(body, type=type_, strict=True)
    except msgspec.ValidationError as exc:
        raise ValidationFailed([_field_error(exc)]) from None
    except msgspec.DecodeError as exc:
        raise ValidationFailed.at("$", f"not valid JSON ({exc})") from None
    except UnicodeDecodeError:
        raise ValidationFailed.at("$", "not valid JSON (the body is not UTF-8)") from None
    except RecursionError:
        raise ValidationFailed.at("$", "nested too deeply") from None
    # Only a body that already has the right shape is scanned again (a second, C-speed pass:
    # a few microseconds for a request body, see docs/security.md).
    _check_unique_keys(body)
    return value


def parse_time(raw: str | None, name: str) -> datetime | None:
    """An RFC 3339 time with a zone from a query parameter, strictly and bounded, in UTC
    (``validation`` at ``query.<name>`` if not)."""
    if raw is None:
        return None
    try:
        value = msgspec.convert(raw, AwareTime, strict=True)
    except msgspec.ValidationError:
        raise ValidationFailed.at(
            f"query.{name}", "an RFC 3339 time with a time zone, e.g. 2026-01-05T09:00:00Z"
        ) from None
    return client_time(value, f"query.{name}")


def decode_fields(fields: dict[str, Any], type_: type[T]) -> T:
    """:func:`decode` for fields already apart (a CSV row): the same shapes, strictly."""
    try:
        return msgspec.convert(fields, type=type_, strict=True)
    except msgspec.ValidationError as exc:
        raise ValidationFailed([_field_error(exc)]) from None
