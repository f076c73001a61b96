"""The request observer: one ASGI layer around the whole app for logs and metrics.

For every HTTP request it adopts or makes the request id (``X-Request-Id``), binds it (and the
method, and later the key id, partner and route) to every log line of the request
(:mod:`coalition.logs`), notes a client that goes away before sending its whole body, and at
the end (just before the last of the response is sent, so a client holding its answer finds
the request counted) writes one ``request`` line (route template, status, duration) and counts
the request in :mod:`coalition.metrics`. It never reads or logs a body, a signature or a secret.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import CLIENT_GONE_KEY, adopt_request_id
from coalition import logs, metrics

log = logging.getLogger("coalition.api.requests")

#: The status logged and counted for a request whose client went away (nginx's convention).
CLIENT_CLOSED_STATUS = 499
_MAX_PATH_CHARS = 512


class RequestObserver:
    """Wraps the Litestar ASGI handler (see :func:`api.app.create_app`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one connection scope; HTTP requests are observed, the rest passed through."""
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state = scope.setdefault("state", {})
        request_id = adopt_request_id(scope)
        response: dict[str, Any] = {"status": 500, "replayed": False}

        async def observed_receive() -> Any:
            message = await receive()
            if message["type"] == "http.disconnect":
                state[CLIENT_GONE_KEY] = True
            return message

        method = str(scope.get("method", ""))
        observed = False

        def done() -> None:
            nonlocal observed
            if not observed:
                observed = True
                self._done(scope, state, method, response, time.perf_counter() - start)

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                response["replayed"] = any(
                    name.lower() == b"idempotent-replayed" for name, _ in message.get("headers", [])
                )
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Observed before the last of the body goes out: a client that has its answer
                # finds the request counted (a scrape right after it cannot miss it).
                done()
            await send(message)

        with logs.request_fields(request_id=request_id, method=method):
            try:
                await self.app(scope, observed_receive, observed_send)
            finally:
                done()

    @staticmethod
    def _done(
        scope: Scope,
        state: dict[str, Any],
        method: str,
        response: dict[str, Any],
        duration_s: float,
    ) -> None:
        route = scope.get("path_template") or "unmatched"
        status = CLIENT_CLOSED_STATUS if state.get(CLIENT_GONE_KEY) else response["status"]
        metrics.observe_request(route, method, status, duration_s, replayed=response["replayed"])
        log.info(
            "request",
            extra={
                "route": route,
                "path": scope.get("path", "")[:_MAX_PATH_CHARS],
                "status": status,
                "duration_ms": round(duration_s * 1000, 3),
                "replayed": response["replayed"] or None,
            },
        )
