"""Lifecycle of ``coalition serve``: liveness without the database, and SIGTERM stopping the
whole process tree (API workers, the scheduler child) after the requests in flight finished."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.api.conftest import Client, Live, unique
from tests.api.serving import Served, alive, descendants, serve_process, wait_for
from tests.conftest import _pg_clone, _pg_drop, require_postgres

#: Bounds of the load: threads, and requests each sends at most.
LOAD_THREADS = 6
LOAD_MAX_REQUESTS = 400


@pytest.fixture(params=[1, 2], ids=["1 worker", "2 workers"])
def sqlite_served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Served]:
    yield from serve_process(tmp_path, workers=request.param, COALITION_SHUTDOWN_TIMEOUT_S="10")


def _scheduler_started(served: Served) -> bool:
    return any(doc["message"].startswith("worker started") for doc in served.lines())


def test_liveness_answers_without_the_database(tmp_path: Path) -> None:
    served_iter = serve_process(tmp_path)
    served = next(served_iter)
    try:
        (tmp_path / "serve.sqlite3").rename(tmp_path / "moved.sqlite3")
        os.chmod(tmp_path, 0o500)  # the database cannot be made again either
        live = requests.get(served.base_url + "/v1/health/live", timeout=5)
        assert live.status_code == 200 and live.json() == {"status": "ok"}
    finally:
        os.chmod(tmp_path, 0o700)
        served_iter.close()


def test_sigterm_stops_the_api_workers_and_the_scheduler(sqlite_served: Served) -> None:
    wait_for(lambda: _scheduler_started(sqlite_served), 30, "the scheduler child to start")
    tree = descendants(sqlite_served.process.pid)
    assert tree, "no scheduler child"
    assert sqlite_served.terminate() == 0
    wait_for(lambda: not any(alive(pid) for pid in tree), 15, f"{tree} to stop")
    messages = [doc["message"] for doc in sqlite_served.lines()]
    assert "worker stopped" in messages and "serve stopped" in messages


def test_the_scheduler_stops_by_itself_when_serve_is_killed(sqlite_served: Served) -> None:
    wait_for(lambda: _scheduler_started(sqlite_served), 30, "the scheduler child to start")
    before = descendants(sqlite_served.process.pid)
    sqlite_served.process.send_signal(signal.SIGKILL)
    sqlite_served.process.wait(timeout=10)
    wait_for(
        lambda: any("parent process" in doc["message"] for doc in sqlite_served.lines()),
        15,
        "the scheduler to notice its parent is gone",
    )
    wait_for(
        lambda: "worker stopped" in [doc["message"] for doc in sqlite_served.lines()],
        15,
        "the orphaned scheduler to stop",
    )
    for pid in before:  # the API workers the supervisor left behind
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@dataclass
class Outcome:
    request_id: str
    sent_at: float
    status: int | None = None
    error: str | None = None
    done_at: float = field(default=0.0)


@pytest.mark.postgres
def test_sigterm_during_signed_load_cuts_no_request_off(tmp_path: Path) -> None:
    require_postgres()
    engine, name = _pg_clone()
    url = engine.url.render_as_string(hide_password=False)
    served_iter = serve_process(
        tmp_path, database_url=url, workers=2, COALITION_SHUTDOWN_TIMEOUT_S="15"
    )
    try:
        served = next(served_iter)
        live = Live(served.base_url, "postgres", engine, served.client(served.operator))
        partner = live.partner()
        member = live.member(partner)
        outcomes: list[Outcome] = []
        stop = threading.Event()
        lock = threading.Lock()

        def load() -> None:
            client = Client(served.base_url, partner.key)
            for _ in range(LOAD_MAX_REQUESTS):
                if stop.is_set():
                    return
                outcome = Outcome(f"load-{uuid.uuid4().hex}", time.monotonic())
                try:
                    response = client.post(
                        "/v1/earns",
                        {
                            "member_id": member,
                            "reference": unique("load"),
                            "amount": "3.00",
                            "currency": "EUR",
                        },
                        headers={"X-Request-Id": outcome.request_id, "Connection": "close"},
                    )
                    outcome.status = response.status_code
                except requests.ConnectionError as exc:
                    outcome.error = type(exc).__name__
                    stop.set()
                outcome.done_at = time.monotonic()
                with lock:
                    outcomes.append(outcome)

        threads = [threading.Thread(target=load) for _ in range(LOAD_THREADS)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(outcomes) >= 60, 60, "some signed traffic")
        signalled_at = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        code = served.process.wait(timeout=60)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        assert code == 0
        answered = [o for o in outcomes if o.status is not None]
        assert all(o.status == 201 for o in answered), {o.status for o in answered}
        in_flight = [o for o in answered if o.sent_at < signalled_at < o.done_at]
        assert in_flight, "no request was in flight at the signal; the test proved nothing"
        handled = {doc.get("request_id") for doc in served.lines()}
        for failed in (o for o in outcomes if o.error is not None):
            # a request that got no answer was never taken in (not cut off half way)
            assert failed.request_id not in handled, failed
    finally:
        served_iter.close()
        engine.dispose()
        _pg_drop(name)
