"""Protections at the HTTP edge that are not about who signed: which address a signature may
name (the Host check) and the headers every response carries.

A signature covers the target URI, so it is tied to one service only if the service checks
that the URI is its own. :func:`signed_urls` gives the URLs a request's signature is checked
against: the URL as received when its Host is one of the service's names (the address, IP and port,
that the connection reached; the configured public URL's host; ``COALITION_ALLOWED_HOSTS``),
and the public URL (behind a proxy) only when ``COALITION_PUBLIC_URL`` is set.
A request addressed elsewhere is ``401 signature-invalid`` with reason ``wrong-host``.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from litestar.connection import ASGIConnection
from litestar.types import Message, Scope

from api.runtime import Services
from coalition.config import Settings
from coalition.db import transaction
from coalition.errors import SignatureInvalid

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _authority(host: str, scheme: str) -> tuple[str, str]:
    """(host, port) of an authority, lower case, the scheme's default port filled in."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host.partition("]")
        name += "]"
        port = rest.removeprefix(":")
    else:
        name, _, port = host.partition(":")
    return name, port or _DEFAULT_PORTS.get(scheme, "")


def _accepted(host: str, scheme: str, settings: Settings, server: Any) -> bool:
    name, port = _authority(host, scheme)
    if server is not None and (name, port) == _authority(f"{server[0]}:{server[1]}", scheme):
        # the very address (IP and port) the connection reached
        return True
    if not settings.public_url_is_default:
        public = urllib.parse.urlsplit(settings.public_url)
        if (name, port) == _authority(public.netloc, public.scheme.lower()):
            return True
    for allowed in settings.allowed_hosts:
        allowed_name, allowed_port = _authority(allowed, scheme)
        any_port = ":" not in allowed.rpartition("]")[2]
        if name == allowed_name and (any_port or port == allowed_port):
            return True
    return False


def signed_urls(
    connection: ASGIConnection[Any, Any, Any, Any], settings: Settings
) -> tuple[str, tuple[str, ...]]:
    """The URL a request's signature is checked against first, and the alternates."""
    scope = connection.scope
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    path_query = f"{path}?{query}" if query else path
    scheme = scope["scheme"]
    server = scope.get("server")
    host = connection.headers.get("host")
    if not host and server is not None:
        host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    urls = []
    if host and _accepted(host, scheme, settings, server):
        urls.append(f"{scheme}://{host}{path_query}")
    if not settings.public_url_is_default:
        urls.append(settings.public_url + path_query)
    if not urls:
        raise SignatureInvalid(
            "the request is addressed to a host this service does not answer for; sign it "
            "for the service's public URL",
            reason="wrong-host",
        )
    return urls[0], tuple(urls[1:])


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The address the request came from (behind a proxy: as uvicorn's ``--proxy-headers``
    and ``--forwarded-allow-ips`` make it)."""
    client = connection.scope.get("client")
    return str(client[0]) if client else None


def count_failure(services: Services, address: str | None) -> None:
    """Count a failed signature against its source address (a transaction of its own: the
    verification's rolled back); ``429 rate-limited`` instead of the 401 once over the limit."""
    now = services.clock()
    with transaction(services.sessions) as session:
        over = services.limiter.count_failure(session, address, now)
    if over and address is not None:
        raise services.limiter.refusal(address, now)


#: Every response: no MIME sniffing.
_ALWAYS = ((b"x-content-type-options", b"nosniff"),)
#: API responses (``/v1``, problems): never stored by a browser or a proxy, above all the
#: ones that carry a secret (a new key's ``secret``, a webhook endpoint's).
_API = ((b"cache-control", b"no-store"),)


def _csp(form_action: bytes) -> tuple[bytes, bytes]:
    return (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; "
        b"form-action " + form_action + b"; frame-ancestors 'none'",
    )


#: HTML pages (the API docs, problem pages): only this service's own scripts and styles,
#: never framed, no referrer sent on.
_FRAMING = (
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
_HTML = (_csp(b"'none'"), *_FRAMING)
#: The console's pages: the same, but their forms post to this service; never stored (they
#: show a partner's numbers, and a new key's secret once).
_CONSOLE = (_csp(b"'self'"), *_FRAMING)
CONSOLE_PREFIX = "/console"


async def add_security_headers(message: Message, scope: Scope) -> None:
    """``before_send`` hook: the headers above, by kind of response."""
    if message["type"] != "http.response.start":
        return
    headers = list(message.get("headers", []))
    names = {bytes(name).lower() for name, _ in headers}
    added = list(_ALWAYS)
    content_type = next(
        (bytes(v).lower() for n, v in headers if bytes(n).lower() == b"content-type"), b""
    )
    path = scope.get("path", "")
    console = path.startswith(CONSOLE_PREFIX + "/") or path == CONSOLE_PREFIX
    if content_type.startswith(b"text/html"):
        added.extend(_CONSOLE if console else _HTML)
    if b"cache-control" not in names and (
        path.startswith("/v1") or (console and not path.startswith(CONSOLE_PREFIX + "/assets/"))
    ):
        added.extend(_API)
    headers.extend(h for h in added if h[0] not in names)
    message["headers"] = headers
