"""Fixtures of the operations tests: real PostgreSQL 15 clusters on loopback
(:mod:`tests.pgservers`), started by the tests. The streaming pair (a primary and its
synchronous standby) is made once per test session and shared by every test that only reads
from it or pauses its replay (and resumes it); a test that breaks a pair (a failover) makes
its own."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from coalition.db import make_engine, migrate
from tests import pgservers
from tests.pgservers import PgServer, PgServers

DATABASE = "coalition"


def require_servers() -> None:
    """Skip (or, under CI, fail) when the PostgreSQL server programs are not installed."""
    pgservers.require(
        pgservers.available(), f"PostgreSQL 15's server programs ({pgservers.BINDIR})"
    )


@dataclass
class Pair:
    """A primary with a migrated database and its synchronous streaming standby."""

    servers: PgServers
    primary: PgServer
    standby: PgServer

    @property
    def url(self) -> str:
        """``COALITION_DATABASE_URL``: the primary."""
        return self.primary.url(DATABASE)

    @property
    def replica_url(self) -> str:
        """``COALITION_REPLICA_DATABASE_URL``: the standby."""
        return self.standby.url(DATABASE)

    def caught_up(self) -> None:
        """Wait until the standby has replayed everything the primary wrote so far."""
        self.standby.catch_up(self.primary)


def migrated_pair(servers: PgServers, *, synchronous: bool = True) -> Pair:
    """A new primary, its standby, and the service's schema in :data:`DATABASE`."""
    primary = servers.primary()
    standby = servers.standby(primary, synchronous=synchronous)
    primary.create_database(DATABASE)
    engine = make_engine(primary.url(DATABASE))
    try:
        migrate(engine)
    finally:
        engine.dispose()
    pair = Pair(servers, primary, standby)
    pair.caught_up()
    return pair


@pytest.fixture(scope="session")
def pair() -> Iterator[Pair]:
    """The shared primary and synchronous standby (see the module docstring)."""
    require_servers()
    with PgServers() as servers:
        yield migrated_pair(servers)
