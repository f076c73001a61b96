"""What one process of the ``coalition`` command builds from the environment: the settings,
the engine and the session factory."""

from __future__ import annotations

import gc
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from coalition.config import Settings, load_settings
from coalition.db import make_engine, schema_is_current, session_factory


@dataclass(frozen=True, slots=True)
class Runtime:
    """Settings, engine and session factory of one process."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]


def runtime(settings: Settings | None = None) -> Runtime:
    """Build the runtime from the environment."""
    settings = settings or load_settings()
    engine = make_engine(settings.database_url, prepared_statements=not settings.database_pgbouncer)
    return Runtime(settings, engine, session_factory(engine))


def ready_runtime() -> Runtime:
    """The runtime of a command that needs the current schema: exits with a hint when the
    database's schema is missing or old."""
    rt = runtime()
    if not schema_is_current(rt.engine):
        raise SystemExit("the database schema is missing or old: run `coalition init` first")
    return rt


def freeze_heap() -> None:
    """Take what this process has built to run (its modules, the app, the engine) out of the
    cyclic garbage collector's sight (``gc.freeze``), after collecting what is garbage already.

    Those objects live as long as the process, yet every full collection traversed them all
    again: a bulk import, whose rows make and drop many objects, spent 44% of its CPU doing so
    (docs/benchmarks.md). For a long-running command or a worker, once it has started."""
    gc.collect()
    gc.freeze()
