"""Slow clients are dropped: a connection whose request headers or body have not all arrived
within the bound is closed; a complete request is answered however the client paces it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from api.app import create_app
from api.server import BoundedH11Protocol, BoundedHttpToolsProtocol
from coalition.config import Settings
from coalition.db import make_engine, migrate
from tests.api.conftest import SECRET_KEY, STARTUP_TIMEOUT_S

READ_TIMEOUT_S = 1.0
#: How long the test waits for the server to close a connection (well past the bound).
CLOSE_WITHIN_S = 10.0


class _QuickH11(BoundedH11Protocol):
    read_timeout_s = READ_TIMEOUT_S


class _QuickHttpTools(BoundedHttpToolsProtocol):
    read_timeout_s = READ_TIMEOUT_S


@pytest.fixture(scope="module", params=[_QuickHttpTools, _QuickH11], ids=["httptools", "h11"])
def address(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('slow') / 'slow.sqlite3'}"
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    app = create_app(Settings(database_url=url, secret_key=SECRET_KEY))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", http=request.param)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    try:
        yield host, port
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _closed_by_server(sock: socket.socket) -> float:
    """Seconds until the server closes the connection (recv returns nothing)."""
    started = time.monotonic()
    sock.settimeout(CLOSE_WITHIN_S)
    while True:
        data = sock.recv(4096)
        if not data:
            return time.monotonic() - started
        assert not data.startswith(b"HTTP/1.1 2"), data


def test_a_client_that_never_finishes_its_headers_is_dropped(address: tuple[str, int]) -> None:
    with socket.create_connection(address) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
        assert _closed_by_server(sock) < CLOSE_WITHIN_S


def test_a_client_that_never_sends_anything_is_dropped(address: tuple[str, int]) -> None:
    with socket.create_connection(address) as sock:
        assert _closed_by_server(sock) < CLOSE_WITHIN_S


def test_a_client_that_never_finishes_its_body_is_dropped(address: tuple[str, int]) -> None:
    with socket.create_connection(address) as sock:
        sock.sendall(
            b"POST /v1/members HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"member'
        )
        assert _closed_by_server(sock) < CLOSE_WITHIN_S


def test_a_complete_request_is_answered_and_the_connection_kept(address: tuple[str, int]) -> None:
    with socket.create_connection(address) as sock:
        sock.settimeout(CLOSE_WITHIN_S)
        for _ in range(2):
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b'"database":"ok"}'):
                data = sock.recv(65536)
                assert data, answer
                answer += data
            assert answer.startswith(b"HTTP/1.1 200"), answer
