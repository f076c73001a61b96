"""``coalition serve``: uvicorn worker processes over the app factory, and the scheduler in a
process of its own; both stop on SIGINT."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

COALITION = [sys.executable, "-m", "cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_runs_workers_and_the_scheduler_and_stops_on_sigint(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "COALITION_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.sqlite3'}",
        "COALITION_SECRET_KEY": base64.urlsafe_b64encode(b"s" * 32).decode().rstrip("="),
    }
    root = Path(__file__).resolve().parents[2]
    init = subprocess.run(
        [*COALITION, "init", "--json"],
        env=env,
        cwd=root,
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert json.loads(init.stdout)["key_id"].startswith("key_")
    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [*COALITION, "serve", "--port", str(port), "--workers", "2"],
            env=env,
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            health = None
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    health = requests.get(f"http://127.0.0.1:{port}/v1/health", timeout=2)
                    break
                except requests.ConnectionError:
                    time.sleep(0.1)
            assert health is not None, log.read_text()
            assert health.json() == {"status": "ok", "database": "ok"}
            unsigned = requests.get(f"http://127.0.0.1:{port}/v1/me", timeout=5)
            assert unsigned.status_code == 401
            schema = requests.get(f"http://127.0.0.1:{port}/schema/openapi.json", timeout=5)
            assert schema.json()["openapi"].startswith("3.1")
            assert requests.get(f"http://127.0.0.1:{port}/schema/swagger", timeout=5).ok
        finally:
            server.send_signal(signal.SIGINT)
            code = server.wait(timeout=30)
    text = log.read_text()
    assert code == 0, text
    assert "worker started: hold-expiry" in text
    assert "idempotency-purge" in text and "nonce-purge" in text
    assert text.count("Started server process") == 2
