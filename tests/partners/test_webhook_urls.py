"""Outbound safety of webhook URLs: only http(s), and no host that resolves to a loopback,
private, link-local, unique-local or metadata address unless private addresses are allowed;
checked at registration and again at delivery (a host may resolve elsewhere later)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sqlalchemy import select

from coalition.db import transaction
from coalition.errors import ValidationFailed
from partners.webhooks.delivery import Dispatcher, _address_url, _host_header
from partners.webhooks.endpoints import Webhooks
from partners.webhooks.tables import WebhookDelivery
from partners.webhooks.urls import Resolver, Target, check_url
from tests.conftest import Db

REFUSED = (
    "127.0.0.1 10.0.0.1 169.254.169.254 ::1 fd00::1 192.168.1.2 172.16.0.1 100.64.0.1 0.0.0.0"
    " ::ffff:10.0.0.1 fe80::1 224.0.0.1"
).split()
#: IPv6 forms that carry a private IPv4 address, which a network with NAT64, 6to4 or Teredo
#: relays reach (each refused like the IPv4 itself).
EMBEDDING_PRIVATE_IPV4 = (
    "::10.0.0.1 ::127.0.0.1 ::ffff:127.0.0.1 ::ffff:169.254.169.254"  # compatible, mapped
    " 64:ff9b::10.0.0.1 64:ff9b::a9fe:a9fe 64:ff9b::127.0.0.1"  # NAT64 (RFC 6052)
    " 64:ff9b:1::10.0.0.1 64:ff9b:1:a00:1::"  # local-use NAT64 (RFC 8215): refused whole
    " 2002:a00:1::1 2002:a9fe:a9fe::1 2002:7f00:1::"  # 6to4 of 10.0.0.1, 169.254..., 127...
    " 2001:0:a00:1::1 2001:0:4136:e378:8000:63bf:f5ff:fffe"  # Teredo
).split()
#: The same forms carrying a public IPv4 address pass (they are that address).
EMBEDDING_PUBLIC_IPV4 = "64:ff9b::8.8.8.8 2002:808:808::1 ::ffff:93.184.215.14".split()


def resolving_to(*addresses: str) -> Resolver:
    def resolver(host: str, port: int) -> Sequence[str]:
        return list(addresses)

    return resolver


@pytest.mark.parametrize("address", REFUSED)
def test_a_host_resolving_to_a_non_public_address_is_refused(address: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        check_url(
            "https://hooks.partner.example/x", allow_private=False, resolver=resolving_to(address)
        )
    assert info.value.errors[0]["path"] == "url"  # the field; the API says $.url


@pytest.mark.parametrize("address", EMBEDDING_PRIVATE_IPV4)
def test_an_ipv6_address_carrying_a_private_ipv4_is_refused(address: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        check_url(
            "https://hooks.partner.example/x", allow_private=False, resolver=resolving_to(address)
        )
    assert info.value.errors[0]["path"] == "url"  # the field; the API says $.url
    assert "non-public" in info.value.errors[0]["message"]


@pytest.mark.parametrize("address", ["::10.0.0.1", "64:ff9b::a9fe:a9fe", "2002:a00:1::1"])
def test_an_ipv6_literal_carrying_a_private_ipv4_is_refused(address: str) -> None:
    """The URL names the address itself (the system resolver returns it as it is)."""
    with pytest.raises(ValidationFailed):
        check_url(f"http://[{address}]:8080/x", allow_private=False)


@pytest.mark.parametrize("address", EMBEDDING_PUBLIC_IPV4)
def test_an_ipv6_address_carrying_a_public_ipv4_passes(address: str) -> None:
    target = check_url(
        "https://hooks.partner.example/x", allow_private=False, resolver=resolving_to(address)
    )
    assert target.address == address


def test_one_non_public_address_among_public_ones_is_refused() -> None:
    with pytest.raises(ValidationFailed):
        check_url(
            "https://hooks.partner.example/x",
            allow_private=False,
            resolver=resolving_to("93.184.215.14", "10.0.0.1"),
        )


def test_private_addresses_pass_when_allowed() -> None:
    target = check_url(
        "http://localhost:8080/x", allow_private=True, resolver=resolving_to("127.0.0.1")
    )
    assert (target.host, target.port, target.address) == ("localhost", 8080, "127.0.0.1")


def test_a_host_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(ValidationFailed) as info:
        check_url("https://nowhere.invalid/", allow_private=True, resolver=resolving_to())
    assert "does not resolve" in info.value.errors[0]["message"]


def test_the_connection_goes_to_the_checked_address_with_the_original_host() -> None:
    v4 = Target("https://hooks.example:8443/a?b=1", "https", "hooks.example", 8443, "93.184.215.14")
    assert _address_url(v4) == "https://93.184.215.14:8443/a?b=1"
    assert _host_header(v4) == "hooks.example:8443"
    v6 = Target("http://hooks.example/a", "http", "hooks.example", 80, "2606:2800:21f:cb07::1")
    assert _address_url(v6) == "http://[2606:2800:21f:cb07::1]/a"
    assert _host_header(v6) == "hooks.example"


@pytest.mark.parametrize("private", ["169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1"])
def test_a_host_that_resolves_privately_at_delivery_is_not_sent_to(db: Db, private: str) -> None:
    shop = db.partner("EUR")
    hooks = Webhooks(
        db.settings.secret_key, allow_private=False, resolver=resolving_to("93.184.215.14")
    )
    with transaction(db.sessions) as s:
        made = hooks.create(
            s,
            shop.id,
            url="https://hooks.partner.example/x",
            events=None,
            description=None,
            now=db.clock(),
        )
        hooks.ping(s, shop.id, made.endpoint.id, now=db.clock())
    rebound = Dispatcher(db.settings, db.sessions, clock=db.clock, resolver=resolving_to(private))
    assert rebound.run() == 1
    with db.sessions() as s:
        [delivery] = s.scalars(select(WebhookDelivery))
    assert delivery.status == "pending" and delivery.last_status_code is None
    assert delivery.last_error is not None and private in delivery.last_error
