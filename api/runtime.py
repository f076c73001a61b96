"""What one API process shares between requests: settings, engine, sessions, operations, the
key cache."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from coalition import metrics
from coalition.config import Settings
from coalition.db import make_engine, session_factory, utcnow
from coalition.errors import InvariantViolated
from coalition.replicas import Reads, Replica
from partners.operations import Operations
from partners.ratelimit import Limiter
from partners.signatures import KeyCache

STATE_KEY = "coalition"


@dataclass(frozen=True, slots=True)
class Services:
    """One per process: built once by the app factory, closed on shutdown."""

    settings: Settings
    engine: Engine
    #: The primary's sessions: every write, and every read that must see its own writes.
    sessions: sessionmaker[Session]
    #: The reads that may be a moment old (the replica's while it is usable).
    reads: Reads
    ops: Operations
    clock: Callable[[], datetime]
    keys: KeyCache
    limiter: Limiter

    @classmethod
    def build(cls, settings: Settings, clock: Callable[[], datetime] = utcnow) -> Services:
        """Engine, session factory and operations for ``settings``."""
        engine = make_engine(
            settings.database_url, prepared_statements=not settings.database_pgbouncer
        )
        metrics.observe_pool(engine)
        sessions = session_factory(engine)
        replica = None
        if settings.replica_database_url:
            replica = Replica(
                make_engine(
                    settings.replica_database_url,
                    pool_size=5,
                    max_overflow=10,
                    prepared_statements=not settings.database_pgbouncer,
                ),
                max_lag_s=settings.replica_max_lag_s,
                observe=metrics.observe_replica,
            )
            replica.start()
        limiter = Limiter(
            per_key=settings.rate_limit_per_key,
            failures_per_address=settings.rate_limit_failures_per_address,
            window_s=settings.rate_limit_window_s,
            flush_s=settings.rate_limit_flush_ms / 1000,
        )
        ops = metrics.instrument_operations(Operations(settings, sessions, clock), engine)
        keys = KeyCache(settings.secret_key)
        return cls(settings, engine, sessions, Reads(sessions, replica), ops, clock, keys, limiter)

    def close(self) -> None:
        """Close the database connections (and stop measuring the replica)."""
        self.reads.close()
        self.engine.dispose()


def services_of(app_state: Any) -> Services:
    """The process's services, from the Litestar app state."""
    services = app_state[STATE_KEY]
    if not isinstance(services, Services):
        raise InvariantViolated("the app state holds no services")
    return services
