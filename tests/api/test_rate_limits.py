"""Rate limits per key and per source address (for failed requests): past a limit the answer
is ``429 rate-limited`` with ``Retry-After``, and the counts are shared by every API process
(two servers over one database here), on both backends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from coalition.db import make_engine, migrate
from tests.api.conftest import Client, Live, ok, problem, serve
from tests.conftest import _pg_clone, _pg_drop, require_postgres

PER_KEY = 6
FAILURES = 3
#: A day-long window (aligned on UTC midnight): a test's requests fall in one window.
WINDOW_S = 86_400


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('limits') / 'limits.sqlite3'}"
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()
        yield url, "sqlite"
        return
    require_postgres()
    engine, name = _pg_clone()
    url = engine.url.render_as_string(hide_password=False)
    engine.dispose()
    try:
        yield url, "postgres"
    finally:
        _pg_drop(name)


def _limited(database: tuple[str, str]) -> Iterator[Live]:
    yield from serve(
        *database,
        rate_limit_per_key=PER_KEY,
        rate_limit_failures_per_address=FAILURES,
        rate_limit_window_s=WINDOW_S,
        rate_limit_flush_ms=0,  # every request merged at once: the sharing counted exactly
    )


@pytest.fixture
def one(database: tuple[str, str]) -> Iterator[Live]:
    """An API process of its own per test (what it remembers as blocked is in memory)."""
    yield from _limited(database)


@pytest.fixture
def other(database: tuple[str, str]) -> Iterator[Live]:
    """A second API process over the same database."""
    yield from _limited(database)


def _limited_problem(response: requests.Response) -> int:
    doc = problem(response, 429, "rate-limited")
    retry = int(response.headers["Retry-After"])
    assert 1 <= retry <= WINDOW_S, retry
    assert "retry" in doc["detail"]
    return retry


def test_a_key_is_limited_across_processes(one: Live, other: Live) -> None:
    key = one.role_key("operator")
    on_one, on_other = one.client(key), other.client(key)
    answers = [(on_one if n % 2 else on_other).get("/v1/me") for n in range(PER_KEY)]
    assert [a.status_code for a in answers] == [200] * PER_KEY
    _limited_problem(on_one.get("/v1/me"))
    _limited_problem(on_other.get("/v1/me"))
    ok(one.client(one.role_key("operator")).get("/v1/me"))  # another key is not limited


def test_failed_requests_limit_their_source_address(one: Live, other: Live) -> None:
    unsigned = Client(one.base_url, None)
    statuses = [unsigned.get("/v1/me").status_code for _ in range(FAILURES)]
    assert statuses == [401] * FAILURES
    _limited_problem(unsigned.get("/v1/me"))
    # the address is refused before verification, even with a good signature...
    _limited_problem(one.operator.get("/v1/me"))
    # ...and the other process refuses it at its next failure
    _limited_problem(Client(other.base_url, None).get("/v1/me"))
