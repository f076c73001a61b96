"""Outbound safety of a webhook URL (:func:`check_url`): only ``http`` and ``https``; a host
that resolves to any address that is not globally routable (loopback, private, link-local and
so the cloud metadata address, unique-local, shared, reserved, multicast) is refused unless
``COALITION_WEBHOOK_ALLOW_PRIVATE`` is on. Registration checks it; the dispatcher checks again
at delivery and connects to the address it checked.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from coalition.errors import ValidationFailed

MAX_URL_LENGTH = 2048

Resolver = Callable[[str, int], Sequence[str]]


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (the system resolver)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


#: IPv6 prefixes whose last 32 bits are an IPv4 address: IPv4-compatible (``::a.b.c.d``,
#: deprecated) and the well-known NAT64 prefix (RFC 6052). The local-use NAT64 prefix
#: (``64:ff9b:1::/48``, RFC 8215) embeds it at a place of the network's choosing: refused whole.
_IPV4_IN_LAST_32_BITS = (ipaddress.IPv6Network("::/96"), ipaddress.IPv6Network("64:ff9b::/96"))
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def _public_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not ip.is_multicast


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, by which a network may reach them:
    IPv4-mapped, IPv4-compatible, NAT64, 6to4 and Teredo (its server and its client)."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if any(ip in prefix for prefix in _IPV4_IN_LAST_32_BITS):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def is_public(address: str) -> bool:
    """True for a globally routable unicast address. An IPv4-mapped IPv6 address is judged by
    its IPv4; any other IPv6 form that carries an IPv4 address (IPv4-compatible, NAT64, 6to4,
    Teredo) must be public itself and carry only public IPv4 addresses."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv4Address):
        return _public_ip(ip)
    if ip.ipv4_mapped is not None:
        return _public_ip(ip.ipv4_mapped)
    if ip in _LOCAL_NAT64:
        return False
    return _public_ip(ip) and all(_public_ip(v4) for v4 in embedded_ipv4(ip))


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: where to connect (``address``) and what to ask for (``url``, ``host``)."""

    url: str
    scheme: str
    host: str
    port: int
    address: str


def check_url(
    url: str, *, allow_private: bool, resolver: Resolver = resolve, path: str = "url"
) -> Target:
    """The URL's target, or ValidationFailed at ``path``: not http(s), no host, user info,
    longer than :data:`MAX_URL_LENGTH`, a host that does not resolve, or (unless
    ``allow_private``) one that resolves to an address that is not public."""
    if len(url) > MAX_URL_LENGTH:
        raise ValidationFailed.at(path, f"at most {MAX_URL_LENGTH} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise ValidationFailed.at(path, "a URL has no white space or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValidationFailed.at(path, "not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValidationFailed.at(path, "only http and https URLs are allowed")
    host = parts.hostname
    if not host:
        raise ValidationFailed.at(path, "the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise ValidationFailed.at(path, "a webhook URL carries no user name or password")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    try:
        addresses = list(resolver(host, port))
    except (OSError, UnicodeError):
        addresses = []
    if not addresses:
        raise ValidationFailed.at(path, f"the host {host} does not resolve")
    if not allow_private:
        refused = [a for a in addresses if not is_public(a)]
        if refused:
            raise ValidationFailed.at(
                path,
                f"the host {host} resolves to {refused[0]}, a loopback, private, link-local or "
                "otherwise non-public address",
            )
    return Target(url, parts.scheme, host, port, addresses[0])
