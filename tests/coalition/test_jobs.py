"""The scheduled jobs' outcomes in the log (coalition.scheduler): the database out of reach (a
restart, a failover) is one warning line per job until the job runs again, which is one info
line; any other failure is an error with its traceback at every run."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest

from coalition.db import make_engine
from coalition.scheduler import Job, _logged
from tests.pgservers import free_port


def _unreachable() -> Callable[[], int]:
    """A job body that fails as a job does when its database server is gone."""
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone")

    def run() -> int:
        with engine.connect():
            return 1

    return run


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "coalition.jobs"]


def test_a_lost_database_is_one_warning_line_per_job_then_one_line_when_it_runs_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gone = _unreachable()
    outcomes: Iterator[Callable[[], int]] = iter([gone, gone, gone, lambda: 2, gone, lambda: 0])

    def step() -> int:
        return next(outcomes)()

    run = _logged(Job("hold-expiry", step, every_s=5))
    caplog.set_level(logging.INFO, logger="coalition.jobs")
    for _ in range(6):
        run()
    said = [(r.levelname, r.getMessage(), r.exc_info) for r in _records(caplog)]
    assert [(level, exc) for level, _, exc in said] == [
        ("WARNING", None),
        ("INFO", None),
        ("INFO", None),
        ("WARNING", None),
        ("INFO", None),
    ], said
    assert said[0][1].startswith("job hold-expiry: the database is unreachable (OperationalError")
    assert said[1][1] == "job hold-expiry: the database is reachable again; the job runs"
    assert said[2][1] == "job hold-expiry: 2 done"


def test_any_other_failure_is_an_error_with_its_traceback_at_every_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> int:
        raise ValueError("a defect")

    run = _logged(Job("points-expiry", broken, every_s=60))
    for _ in range(2):
        run()
    said = _records(caplog)
    assert [r.levelname for r in said] == ["ERROR", "ERROR"]
    assert all(r.exc_info is not None and r.exc_info[0] is ValueError for r in said)
