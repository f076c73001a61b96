"""Structured logs: one JSON object per line, on standard error.

Every record becomes ``{"ts", "level", "logger", "message", ...fields}``. JSON escapes every
control character (a newline, a NUL) by construction, so text a client sent (a path, a header)
can never forge a line of its own. Fields of the request being served (``request_id``,
``key_id``, ``partner_id``, ``method``, ``route``) come from :func:`bind`, which the API's
request middleware and its signature guard call; a record's own ``extra={...}`` adds more.

What is never logged: secrets, signatures, request or response bodies. Nothing here reads
them, and the code that logs passes ids, counts and type names only.

The level is ``COALITION_LOG_LEVEL`` (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``; default
``INFO``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.config
import os
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import msgspec

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_LEVEL = "INFO"
#: The longest single string field written (a longer one is cut, saying so).
MAX_FIELD_CHARS = 4096

#: The fields of the request (or job) being served: one dict per request, changed in place by
#: :func:`bind` (so a value bound in a worker thread is seen by the request's later lines).
_fields: ContextVar[dict[str, Any] | None] = ContextVar("coalition_log_fields", default=None)

# The attributes every LogRecord has; anything else on a record came from ``extra=``
# (uvicorn's ``color_message`` is its message again, with terminal colours).
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "color_message"}
)


def log_level(environ: Mapping[str, str] | None = None) -> str:
    """The configured level name (``COALITION_LOG_LEVEL``); ``ValueError`` when unknown."""
    env = os.environ if environ is None else environ
    level = env.get("COALITION_LOG_LEVEL", DEFAULT_LEVEL).strip().upper() or DEFAULT_LEVEL
    if level not in LEVELS:
        raise ValueError(f"COALITION_LOG_LEVEL: one of {', '.join(LEVELS)}, got {level!r}")
    return level


@contextlib.contextmanager
def request_fields(**fields: Any) -> Iterator[dict[str, Any]]:
    """Bind ``fields`` to every record logged in this context (one request, one job run)."""
    bound = {k: v for k, v in fields.items() if v is not None}
    token = _fields.set(bound)
    try:
        yield bound
    finally:
        _fields.reset(token)


def bind(**fields: Any) -> None:
    """Add ``fields`` to the current request's records (nothing outside a request)."""
    bound = _fields.get()
    if bound is not None:
        bound.update({k: v for k, v in fields.items() if v is not None})


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return value[:MAX_FIELD_CHARS] + f"...[{len(value) - MAX_FIELD_CHARS} more]"
    return value


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A line never shows the file and line it was logged from: in a process that writes
        # these lines (every ``coalition`` command, each ``serve`` worker configures them),
        # skip the stack walk each record would make (the logging HOWTO's "Optimization").
        logging._srcfile = None

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object on one line."""
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _clip(record.getMessage()),
            "pid": record.process,
        }
        doc.update(_fields.get() or {})
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRS and not name.startswith("_") and value is not None:
                doc[name] = _clip(value)
        if record.exc_info:
            doc["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            doc["exc"] = _clip(self.formatException(record.exc_info))
        line = _ENCODER.encode(doc).decode()
        if line.isascii():
            return line
        return json.dumps(json.loads(line), ensure_ascii=True, separators=(",", ":"))


#: msgspec writes the JSON of a line (a tenth of the Python CPU of a signed request went to
#: the request's line through ``json``); values it has no JSON for are written as ``str``.
#: A line with text beyond ASCII is written again by ``json``, escaped to ASCII.
_ENCODER = msgspec.json.Encoder(enc_hook=str)


def logging_config(level: str | None = None) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` for JSON lines on stderr, uvicorn's loggers
    included (its access log is off: the API writes its own line per request)."""
    chosen = level or log_level()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "coalition.logs.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": chosen, "handlers": ["stderr"]},
        "loggers": {
            "uvicorn": {"level": chosen, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": chosen, "handlers": [], "propagate": True},
            "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
            "alembic": {"level": "WARNING", "propagate": True},
            "apscheduler": {"level": "WARNING", "propagate": True},
        },
    }


def configure(level: str | None = None) -> None:
    """Send every log record of this process to stderr as JSON lines."""
    logging.config.dictConfig(logging_config(level))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    logging.getLogger("coalition").critical("uncaught exception", exc_info=(kind, exc, tb))
