"""``coalition serve``: the HTTP API under uvicorn, with ``coalition worker`` (:mod:`cli.jobs`)
as its scheduler child.

This module imports nothing that loads prometheus_client (the API, the operations, the jobs):
:func:`_metrics_dir` must set ``PROMETHEUS_MULTIPROC_DIR`` before that import, which picks the
multiprocess mode (with one worker, uvicorn runs the app in this very process)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from cli.runtime import freeze_heap, ready_runtime
from coalition import logs

if TYPE_CHECKING:
    from litestar import Litestar

#: The command that runs this program again (the scheduler child of ``coalition serve``).
COMMAND = [sys.executable, "-m", "cli"]


class _Terminated(Exception):
    """SIGTERM reached ``coalition serve`` (after uvicorn finished its graceful shutdown)."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise _Terminated


def _metrics_dir() -> tempfile.TemporaryDirectory[str] | None:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` for the workers: the operator's, emptied of an earlier
    run's samples, or a fresh temporary directory removed at exit (returned, to clean up).

    Before anything imports prometheus_client: it picks its multiprocess mode on import."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return None
    made = tempfile.TemporaryDirectory(prefix="coalition-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made.name
    return made


def _stop(child: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM ``child`` and wait for it (SIGKILL after ``timeout_s``)."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def worker_app() -> Litestar:
    """The application of one uvicorn worker (:func:`api.app.create_app`), its start-up heap
    then frozen (:func:`cli.runtime.freeze_heap`: 15-20% less CPU per signed earn)."""
    from api.app import create_app  # noqa: PLC0415 (in the worker, after its environment)

    app = create_app()
    freeze_heap()
    return app


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP API with uvicorn (``--workers`` processes) and, unless
    ``--no-scheduler``, the scheduled jobs in a child process (``coalition worker``).

    SIGTERM (or SIGINT): stop accepting connections, let the requests in flight finish (at most
    ``COALITION_SHUTDOWN_TIMEOUT_S``), stop the scheduler child (its running job finishes),
    exit 0. The child also stops by itself when this process is gone (even after SIGKILL), so
    restarts never stack schedulers.
    """
    import uvicorn  # noqa: PLC0415 (only this command needs the server)

    rt = ready_runtime()
    if rt.settings.secret_key_is_dev_default:
        logging.getLogger("coalition").warning(
            "serving with the development COALITION_SECRET_KEY; set it in production"
        )
    rt.engine.dispose()
    signal.signal(signal.SIGTERM, _on_sigterm)
    metrics_dir = _metrics_dir()
    scheduler = None
    if not args.no_scheduler:
        scheduler = subprocess.Popen(  # noqa: S603 (this very program, no shell)
            [*COMMAND, "worker", "--parent-pid", str(os.getpid())]
        )
    try:
        uvicorn.run(
            "cli.serve:worker_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_config=logs.logging_config(),
            access_log=False,  # the API writes its own JSON line per request
            timeout_graceful_shutdown=rt.settings.shutdown_timeout_s,
            # X-Forwarded-* only from a proxy on this machine; behind another proxy set
            # COALITION_PUBLIC_URL so signatures over the public URL verify.
            proxy_headers=True,
            forwarded_allow_ips="127.0.0.1",
            # httptools with a bound on how long a request may take to arrive (slow clients
            # are dropped) and on the size of its head (431): api/server.py; idle keep-alive
            # connections close after 5 s
            http="api.server:BoundedHttpToolsProtocol",
            timeout_keep_alive=5,
            # A worker answers the supervisor's health check once it has imported the app; on
            # a loaded host that import took 17 s, and uvicorn's default 5 s killed and
            # restarted the workers in a loop.
            timeout_worker_healthcheck=60,
        )
    except _Terminated:
        pass
    finally:
        if scheduler is not None:
            _stop(scheduler, rt.settings.shutdown_timeout_s)
        if metrics_dir is not None:
            metrics_dir.cleanup()
    logging.getLogger("coalition").info("serve stopped")
    return 0
