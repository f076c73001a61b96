"""The HTTP server's protocol: uvicorn's (httptools, or h11) with a bound on how long a
request may take to arrive.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) and bounds the size of the
headers (h11, 16 KiB), but it waits for ever for a request whose headers or body trickle in (a
"slowloris" client holds a connection, and a worker's file descriptors, with a byte a minute).
:class:`BoundedHttpToolsProtocol` (and :class:`BoundedH11Protocol`) drop a connection whose
request (headers and body) is not complete within ``COALITION_REQUEST_READ_TIMEOUT_S`` (default
20 s) of the connection being opened or of the previous response: no answer, the connection is
closed. A request that has fully arrived is never cut, however long the service takes to answer
it.

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
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("coalition.api")

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


class BoundedHttpToolsProtocol(_ReadDeadline, HttpToolsProtocol):
    """uvicorn's httptools protocol (what ``coalition serve`` runs: its C parser costs a tenth
    of a request's CPU less than h11) that drops a request still arriving after the bound."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = OneWriteTransport(transport, self.loop)
        self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class BoundedH11Protocol(_ReadDeadline, H11Protocol):
    """uvicorn's h11 protocol (pure Python, where httptools is not installed) that drops a
    request still arriving after the bound."""

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
