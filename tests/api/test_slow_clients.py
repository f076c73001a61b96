"""Slow clients are dropped: a connection whose request headers or body have not all arrived
within the bound is closed; a complete request is answered however the client paces it. And
what the protocols write goes out whole and in order, a response in one write."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from api.app import create_app
from api.server import (
    HELD_MAX_BYTES,
    BoundedH11Protocol,
    BoundedHttpToolsProtocol,
    OneWriteTransport,
)
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


def _answers(sock: socket.socket, count: int) -> bytes:
    answer = b""
    while answer.count(b'"database":"ok"}') < count:
        data = sock.recv(65536)
        assert data, answer
        answer += data
    return answer


def test_pipelined_requests_are_answered_in_order(address: tuple[str, int]) -> None:
    """Every write of a connection goes through one held buffer: two requests sent at once get
    their two answers, whole and in order."""
    with socket.create_connection(address) as sock:
        sock.settimeout(CLOSE_WITHIN_S)
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        answer = _answers(sock, 2)
        assert answer.count(b"HTTP/1.1 200") == 2, answer


def test_a_client_expecting_100_continue_hears_it_before_it_sends_the_body(
    address: tuple[str, int],
) -> None:
    """A write not followed by more (``100 Continue``) is sent at the end of its turn of the
    event loop, not held until the response."""
    body = b'{"member_id": "mem_x"}'
    with socket.create_connection(address) as sock:
        sock.settimeout(CLOSE_WITHIN_S)
        sock.sendall(
            b"POST /v1/members HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue"), "no 100 Continue"
        sock.sendall(body)
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 401"), answer  # unsigned: answered, not hung


class _Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


def test_a_response_goes_out_in_one_write_and_nothing_is_lost() -> None:
    async def run() -> list[list[bytes]]:
        inner = _Recorder()
        transport = OneWriteTransport(inner, asyncio.get_running_loop())
        seen = []
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")  # the head and the body, in one turn
        transport.write(b"body")
        assert inner.sent == []
        await asyncio.sleep(0)
        seen.append(inner.sent[:])
        inner.sent.clear()
        transport.write(b"x" * (HELD_MAX_BYTES + 1))  # a long body is not held
        seen.append(inner.sent[:])
        inner.sent.clear()
        transport.write(b"last words")
        transport.close()  # sends what is held first
        seen.append([*inner.sent, b"closed" if inner.closed else b"open"])
        await asyncio.sleep(0)
        return seen

    one, long, closing = asyncio.run(run())
    assert one == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    assert long == [b"x" * (HELD_MAX_BYTES + 1)]
    assert closing == [b"last words", b"closed"]
