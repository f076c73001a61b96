"""A request's head (request line and headers together) is at most 16 KiB: past it the answer
is ``431`` with a problem document, before any work, and the connection is closed; per request
on a keep-alive connection, in both protocols ``coalition serve`` can run, over a real socket.
And a client that keeps sending headers cannot make the process grow."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from api.app import create_app
from api.server import MAX_HEAD_BYTES, BoundedH11Protocol
from coalition.config import Settings
from coalition.db import make_engine, migrate
from tests.api.conftest import SECRET_KEY, STARTUP_TIMEOUT_S
from tests.api.serving import Served, descendants, serve_process

KIB = 1024
TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve_process(tmp_path_factory.mktemp("head-limit"))


@pytest.fixture(scope="module")
def h11_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('head-h11') / 'h11.sqlite3'}"
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    app = create_app(Settings(database_url=url, secret_key=SECRET_KEY))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", http=BoundedH11Protocol)
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


@pytest.fixture(params=["httptools", "h11"])
def address(request: pytest.FixtureRequest) -> tuple[str, int]:
    """``coalition serve`` (httptools), and uvicorn with the service's h11 protocol."""
    if request.param == "httptools":
        served: Served = request.getfixturevalue("served")
        host, port = served.base_url.removeprefix("http://").split(":")
        return host, int(port)
    found: tuple[str, int] = request.getfixturevalue("h11_address")
    return found


def _request(*headers: bytes, path: bytes = b"/v1/health/live") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path, b"".join(h + b"\r\n" for h in headers))


def _big(size: int) -> bytes:
    """One header whose line is ``size`` bytes."""
    return b"X-Big: " + b"a" * (size - len(b"X-Big: \r\n"))


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


def _read_answer(sock: socket.socket, buffer: bytearray) -> Answer:
    """One response from the connection (``buffer`` keeps what followed it)."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        assert data, f"connection closed before an answer: {bytes(buffer)!r}"
        buffer += data
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        data = sock.recv(65536)
        assert data, "connection closed inside a body"
        rest += data
    buffer[:] = rest[length:]
    return Answer(int(lines[0].split()[1]), headers, rest[:length])


def _closed(sock: socket.socket, buffer: bytearray) -> bool:
    if buffer:
        return False
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def _exchange(address: tuple[str, int], *requests: bytes) -> tuple[list[Answer], bool]:
    """Send ``requests`` one after the other on one connection: each answer, and whether the
    server closed the connection after the last."""
    with socket.create_connection(address, timeout=TIMEOUT_S) as sock:
        buffer = bytearray()
        answers = []
        for request in requests:
            sock.sendall(request)
            answers.append(_read_answer(sock, buffer))
        return answers, _closed(sock, buffer)


def _assert_431(answer: Answer) -> None:
    assert answer.status == 431, answer.body
    assert answer.headers["content-type"] == "application/problem+json"
    problem = json.loads(answer.body)
    assert problem["type"] == "/problems/headers-too-large"
    assert problem["status"] == 431
    assert "16 KiB" in problem["detail"]
    assert problem["request_id"] == answer.headers["x-request-id"]


def test_a_17_kib_header_is_431_and_the_connection_closed(address: tuple[str, int]) -> None:
    (answer,), closed = _exchange(address, _request(_big(17 * KIB)))
    _assert_431(answer)
    assert closed


def test_many_small_headers_over_16_kib_are_431(address: tuple[str, int]) -> None:
    headers = [b"X-H%03d: %s" % (i, b"v" * 80) for i in range(200)]  # 200 x 89 bytes
    (answer,), closed = _exchange(address, _request(*headers))
    _assert_431(answer)
    assert closed


def test_a_15_kib_header_is_answered(address: tuple[str, int]) -> None:
    """And the connection stays open for the next request."""
    answers, _ = _exchange(address, _request(_big(15 * KIB)), _request())
    assert [a.status for a in answers] == [200, 200], answers[0].body


def test_the_bound_is_per_request_on_a_keep_alive_connection(address: tuple[str, int]) -> None:
    """Three heads of 15 KiB pass one after the other on one connection; a fourth of 17 KiB
    is refused."""
    near = _request(_big(15 * KIB))
    answers, closed = _exchange(address, near, near, near, _request(_big(17 * KIB)))
    assert [a.status for a in answers[:3]] == [200, 200, 200]
    _assert_431(answers[3])
    assert closed


def test_a_head_that_trickles_in_is_bounded_too(address: tuple[str, int]) -> None:
    request = _request(_big(20 * KIB))
    with socket.create_connection(address, timeout=TIMEOUT_S) as sock:
        try:
            for start in range(0, len(request), KIB):
                sock.sendall(request[start : start + KIB])
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the client finished: what is asserted below
        _assert_431(_read_answer(sock, bytearray()))


def test_a_pipelined_oversized_head_behind_a_request_is_431(address: tuple[str, int]) -> None:
    """The second request's head arrives in the same read as the end of the first."""
    both = _request() + _request(*[b"X-H%03d: %s" % (i, b"v" * 80) for i in range(200)])
    with socket.create_connection(address, timeout=TIMEOUT_S) as sock:
        sock.sendall(both)
        buffer = bytearray()
        assert _read_answer(sock, buffer).status == 200
        _assert_431(_read_answer(sock, buffer))
        assert _closed(sock, buffer)


def test_the_head_at_the_bound_passes_and_one_byte_more_is_431(address: tuple[str, int]) -> None:
    fixed = len(_request(b""))
    exactly = _request(_big(MAX_HEAD_BYTES - fixed + 2))  # the header line's own CRLF
    assert len(exactly) == MAX_HEAD_BYTES
    (answer,), _ = _exchange(address, exactly)
    assert answer.status == 200
    (answer,), _ = _exchange(address, _request(_big(MAX_HEAD_BYTES - fixed + 3)))
    _assert_431(answer)


def _rss_kib(pids: set[int]) -> int:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def test_32_mib_of_headers_do_not_grow_the_process(served: Served) -> None:
    host, port = served.base_url.removeprefix("http://").split(":")
    pids = {served.process.pid, *descendants(served.process.pid)}
    before = _rss_kib(pids)
    chunk = b"X-Flood: " + b"f" * (KIB - 11) + b"\r\n"
    for _ in range(8):  # 8 connections of 4 MiB: one endless header each
        with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as sock:
            sock.sendall(b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\nX-Endless: ")
            try:
                for _ in range(4 * KIB):
                    sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            # the answer may be lost to the reset of the unread flood
            with contextlib.suppress(ConnectionResetError):
                _assert_431(_read_answer(sock, bytearray()))
    grown_kib = _rss_kib(pids) - before
    assert grown_kib < 8 * KIB, f"the server grew by {grown_kib} KiB"
