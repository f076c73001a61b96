"""``coalition serve`` as a real process tree for the operations tests: its JSON log lines,
its process tree, and a signed client built from ``coalition init --json``."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.api.conftest import Client, Key

COALITION = [sys.executable, "-m", "cli"]
ROOT = Path(__file__).resolve().parents[2]
SECRET = base64.urlsafe_b64encode(b"s" * 32).decode().rstrip("=")
#: Bounds of the waits below (a condition polled, never a fixed sleep).
START_TIMEOUT_S = 40.0
LOG_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``condition`` until it is truthy (its value), failing after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Served:
    """A running ``coalition serve`` process, its log file and an operator key."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    operator: Key
    env: dict[str, str]

    def client(self, key: Key | None = None) -> Client:
        return Client(self.base_url, key)

    def lines(self) -> list[dict[str, Any]]:
        """Every log line so far, each parsed as JSON (a line that is not JSON fails)."""
        raw = self.log_path.read_bytes()
        assert b"\x00" not in raw, "a raw NUL byte reached the log"
        text = raw.decode()
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def line_of(self, request_id: str, message: str = "request") -> dict[str, Any]:
        """The (first) line with ``message`` of the request ``request_id``, once written."""
        found: dict[str, Any] = wait_for(
            lambda: next(
                (
                    doc
                    for doc in self.lines()
                    if doc.get("request_id") == request_id and doc["message"] == message
                ),
                None,
            ),
            LOG_TIMEOUT_S,
            f"the {message!r} line of {request_id}",
        )
        return found

    def terminate(self, timeout_s: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)


def serve_process(
    tmp_path: Path, *, database_url: str | None = None, workers: int = 1, **env_extra: str
) -> Generator[Served, None, None]:
    """``coalition init`` then ``coalition serve`` on a free port, until the generator closes."""
    env = {
        **os.environ,
        "COALITION_DATABASE_URL": database_url or f"sqlite:///{tmp_path / 'serve.sqlite3'}",
        "COALITION_SECRET_KEY": SECRET,
        "COALITION_LOG_LEVEL": "INFO",
        **env_extra,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    init = subprocess.run(
        [*COALITION, "init", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert init.returncode == 0, init.stderr.decode()
    made = json.loads(init.stdout)
    operator = Key(made["key_id"], "hmac-sha256", base64.urlsafe_b64decode(made["secret"] + "="))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env["COALITION_PUBLIC_URL"] = base_url
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [*COALITION, "serve", "--port", str(port), "--workers", str(workers)],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=out,
        )
    served = Served(process, base_url, log_path, operator, env)
    try:

        def up() -> bool:
            assert process.poll() is None, log_path.read_text()
            try:
                return requests.get(base_url + "/v1/health", timeout=2).ok
            except requests.ConnectionError:
                return False

        wait_for(up, START_TIMEOUT_S, "coalition serve to answer /v1/health")
        yield served
    finally:
        left = descendants(process.pid)
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        for pid in left:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
