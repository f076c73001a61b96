"""The HTTP server's protocol: uvicorn's (httptools, or h11) with a bound on how long a
request may take to arrive and on the size of its head.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``), but it waits for ever for a
request whose headers or body trickle in (a "slowloris" client holds a connection, and a
worker's file descriptors, with a byte a minute), and its httptools protocol takes headers of
any size (h11 bounds only an *incomplete* head: a 1 MiB head that arrives in one read passes).
:class:`BoundedHttpToolsProtocol` (and :class:`BoundedH11Protocol`) drop a connection whose
request (headers and body) is not complete within ``COALITION_REQUEST_READ_TIMEOUT_S`` (default
20 s) of the connection being opened or of the previous response: no answer, the connection is
closed. A request that has fully arrived is never cut, however long the service takes to answer
it.

Both protocols also bound the head of every request (request line and headers together) to
:data:`MAX_HEAD_BYTES` (16 KiB), per request on a keep-alive connection: past it the answer is
``431`` with a problem document and the connection is closed, before the application sees the
request (:class:`_HeadLimit`). The head is read in slices that end at the bound, so what a
connection holds of an unfinished head never exceeds it.

uvicorn stays the server (``coalition serve``): it is what the service and its tests run on,
and this is the one bound it lacks; this class is its documented ``http=`` extension point.

The same protocols write a response in one ``send`` (:class:`OneWriteTransport`): uvicorn
writes the head and the body of a response as they come, two system calls (and on loopback,
two wake-ups of the client) where one does; that was a twelfth of a signed earn's CPU.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, cast

import h11
from litestar.types import Scope
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.problems import PROBLEM_JSON, problem_body, request_id

log = logging.getLogger("coalition.api")

#: The most a request's head (request line and headers, with their line ends) may take.
MAX_HEAD_BYTES = 16 * 1024

TIMEOUT_ENV = "COALITION_REQUEST_READ_TIMEOUT_S"
DEFAULT_REQUEST_READ_TIMEOUT_S = 20.0
#: What :class:`OneWriteTransport` holds at most before it sends.
HELD_MAX_BYTES = 64 * 1024


def request_read_timeout_s() -> float:
    """The bound, from the environment (``coalition serve`` passes its setting on to its
    worker processes this way)."""
    try:
        value = float(os.environ.get(TIMEOUT_ENV, DEFAULT_REQUEST_READ_TIMEOUT_S))
    except ValueError:
        return DEFAULT_REQUEST_READ_TIMEOUT_S
    return value if value > 0 else DEFAULT_REQUEST_READ_TIMEOUT_S


class OneWriteTransport(asyncio.Transport):
    """A connection's transport whose writes within one turn of the event loop go out as one
    ``write`` at the end of that turn (uvicorn writes a response's head and its body in the
    same turn). Order is kept: every write of the connection goes through here, and
    :meth:`close` sends what is held first."""

    __slots__ = ("_held", "_held_bytes", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._held_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hold ``data`` until the end of this turn of the event loop (past
        :data:`HELD_MAX_BYTES`, send it now: a long body goes out, and meets flow control, as
        it is written)."""
        if not self._held:
            self._loop.call_soon(self._send)
        self._held.append(bytes(data))
        self._held_bytes += len(data)
        if self._held_bytes > HELD_MAX_BYTES:
            self._send()

    def _send(self) -> None:
        held, self._held, self._held_bytes = self._held, [], 0
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        """Send what is held, then close (as a transport sends its buffer before closing)."""
        self._send()
        self._transport.close()

    def abort(self) -> None:
        """Close at once; what is held is dropped."""
        self._held, self._held_bytes = [], 0
        self._transport.abort()

    def is_closing(self) -> bool:
        """True once the connection is closing."""
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The connection's (socket, peername...)."""
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Hand the connection to another protocol (an upgrade), after what is held."""
        self._send()
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The connection's protocol."""
        return self._transport.get_protocol()

    def pause_reading(self) -> None:
        """Stop reading from the connection."""
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the connection again."""
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        """True while the connection is read."""
        return self._transport.is_reading()

    def get_write_buffer_size(self) -> int:
        """Bytes not yet sent, held here included."""
        return self._transport.get_write_buffer_size() + self._held_bytes

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """The connection's flow-control marks."""
        self._transport.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        """Whether the connection can be half-closed."""
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        """Half-close the connection, after what is held."""
        self._send()
        self._transport.write_eof()


class _ReadDeadline:
    """The bound, for either of uvicorn's HTTP protocols: armed when a connection opens and
    after each response, disarmed once a request has fully arrived."""

    read_timeout_s: float | None = None  # None: from the environment
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    _read_deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        timeout = self.read_timeout_s or request_read_timeout_s()
        self._read_deadline = self.loop.call_later(timeout, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _still_arriving(self) -> bool:
        return True  # armed means a request is due or arriving

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if not self.transport.is_closing() and self._still_arriving():
            # headers or body still incomplete: a slow (or stalled) client
            log.info("dropped a connection whose request did not arrive in time")
            self.transport.close()


def _head_too_large_response() -> bytes:
    """The ``431`` problem document, as the bytes of a whole response that closes."""
    scope = cast("Scope", {})
    status, body = problem_body(
        scope,
        "headers-too-large",
        f"the request line and headers may be at most {MAX_HEAD_BYTES // 1024} KiB together",
    )
    return b"".join(
        [
            b"HTTP/1.1 %d Request Header Fields Too Large\r\n" % status,
            b"content-type: %s\r\n" % PROBLEM_JSON.encode(),
            b"content-length: %d\r\n" % len(body),
            b"x-request-id: %s\r\n" % request_id(scope).encode(),
            b"cache-control: no-store\r\n",
            b"x-content-type-options: nosniff\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head past the bound."""


class _HeadLimit:
    """The bound on a request's head, for either protocol: a parser that reports the head as
    too large makes the connection answer ``431`` and close instead of uvicorn's ``400``."""

    transport: asyncio.Transport
    _head_too_large = False
    _refusal_pending = False

    def _answering(self) -> bool:
        """A request before this one is still being answered (pipelining)."""
        return False

    def _refuse_head(self) -> None:
        """Answer ``431`` and close, after the answers of the requests before it."""
        if self._answering():
            self._refusal_pending = True
        elif not self.transport.is_closing():
            log.info("refused a request whose head is over %d bytes", MAX_HEAD_BYTES)
            self.transport.write(_head_too_large_response())
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse; ``431`` when the head was too large."""
        if self._head_too_large:
            self._refuse_head()
        else:
            super().send_400_response(msg)  # type: ignore[misc]


class BoundedHttpToolsProtocol(_HeadLimit, _ReadDeadline, HttpToolsProtocol):
    """uvicorn's httptools protocol (what ``coalition serve`` runs: its C parser costs a tenth
    of a request's CPU less than h11) that drops a request still arriving after the bound and
    refuses a head over :data:`MAX_HEAD_BYTES`.

    httptools keeps a header that is still arriving whole in memory, however long, so a head
    is fed to it in slices that end at the bound (:meth:`data_received`); what the parser
    reports (the request line and each header) is counted too, which bounds a pipelined
    request's head that arrived in the same read as the end of the one before.
    """

    #: Bytes of the current head received so far (reset once its message is complete).
    _head_received = 0
    #: Bytes of the current head parsed so far: URL and headers as the parser reports them.
    _head_parsed = 0
    _in_head = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = OneWriteTransport(transport, self.loop)
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Feed the parser; a head only up to the bound, then ``431``."""
        while data:
            if not self._in_head:
                super().data_received(data)
                return
            room = MAX_HEAD_BYTES - self._head_received
            if room <= 0:
                self._head_too_large = True
                self._refuse_head()
                return
            piece, data = (data, b"") if len(data) <= room else (data[:room], data[room:])
            self._head_received += len(piece)
            super().data_received(piece)
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return

    def _parsed(self, size: int) -> None:
        self._head_parsed += size
        if self._head_parsed > MAX_HEAD_BYTES:
            self._head_too_large = True
            raise _HeadTooLarge

    def on_message_begin(self) -> None:
        self._head_parsed = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._parsed(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head, self._head_received = True, 0
        super().on_message_complete()

    def _answering(self) -> bool:
        cycle = self.cycle
        return bool(self.pipeline) or (cycle is not None and not cycle.response_complete)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refusal_pending and not self._answering():
            self._refuse_head()
        elif not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class _BoundedConnection(h11.Connection):
    """h11's connection with the head bound: h11 bounds what it buffers of an incomplete head
    (``max_incomplete_event_size``, set to :data:`MAX_HEAD_BYTES`) but parses a complete head
    of any size that arrived in one read; that one is measured here."""

    head_too_large = False

    def __init__(self) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)

    def next_event(self) -> Any:
        """h11's next event; a head over the bound is a protocol error (``431``)."""
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.head_too_large = exc.error_status_hint == 431
            raise
        if isinstance(event, h11.Request) and _head_size(event) > MAX_HEAD_BYTES:
            self.head_too_large = True
            raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
        return event


def _head_size(request: h11.Request) -> int:
    """The bytes of a parsed head: request line, each header with ``": "`` and CRLF, the
    blank line (h11 drops optional white space, so this is at most what was sent)."""
    line = len(request.method) + len(request.target) + len(b"  HTTP/1.1\r\n")
    headers = sum(len(name) + len(value) + 4 for name, value in request.headers.raw_items())
    return line + headers + 2


class BoundedH11Protocol(_HeadLimit, _ReadDeadline, H11Protocol):
    """uvicorn's h11 protocol (pure Python, where httptools is not installed) that drops a
    request still arriving after the bound and refuses a head over :data:`MAX_HEAD_BYTES`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _BoundedConnection()

    @property
    def _head_too_large(self) -> bool:  # type: ignore[override]
        return isinstance(self.conn, _BoundedConnection) and self.conn.head_too_large

    def _still_arriving(self) -> bool:
        return self.conn.their_state in (h11.IDLE, h11.SEND_BODY)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = OneWriteTransport(transport, self.loop)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
