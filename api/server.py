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
"""

from __future__ import annotations

import asyncio
import logging
import os

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("coalition.api")

TIMEOUT_ENV = "COALITION_REQUEST_READ_TIMEOUT_S"
DEFAULT_REQUEST_READ_TIMEOUT_S = 20.0


def request_read_timeout_s() -> float:
    """The bound, from the environment (``coalition serve`` passes its setting on to its
    worker processes this way)."""
    try:
        value = float(os.environ.get(TIMEOUT_ENV, DEFAULT_REQUEST_READ_TIMEOUT_S))
    except ValueError:
        return DEFAULT_REQUEST_READ_TIMEOUT_S
    return value if value > 0 else DEFAULT_REQUEST_READ_TIMEOUT_S


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
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
