"""Signatures are tied to the service's address: a request signed for another host or port is
refused, and the public URL is an alternate only when COALITION_PUBLIC_URL is configured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from coalition.db import make_engine, migrate
from tests.api.conftest import Key, Live, ok, problem, serve


def _server(tmp: Path, **settings: Any) -> Iterator[Live]:
    url = f"sqlite:///{tmp / 'host.sqlite3'}"
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    yield from serve(url, "sqlite", **settings)


@pytest.fixture(scope="module")
def unconfigured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """COALITION_PUBLIC_URL not set: the default http://127.0.0.1:8000 is no address of it."""
    yield from _server(
        tmp_path_factory.mktemp("unconfigured"),
        public_url="http://127.0.0.1:8000",
        public_url_is_default=True,
    )


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    yield from _server(
        tmp_path_factory.mktemp("proxy"),
        public_url="https://points.example",
        allowed_hosts=("api.internal", "admin.internal:9443"),
    )


def _send(live: Live, key: Key, signed_for: str, path: str, host: str | None = None) -> Any:
    """A request signed for ``signed_for`` + ``path``, delivered to the live server."""
    request = key.auth()(requests.Request("GET", signed_for + path).prepare())
    assert isinstance(request, requests.PreparedRequest)
    request.url = live.base_url + path
    if host is not None:
        request.headers["Host"] = host
    with requests.Session() as session:
        return session.send(request, timeout=10)


def _operator(live: Live) -> Key:
    key = live.operator.key
    assert key is not None
    return key


def test_without_a_public_url_the_address_reached_is_the_only_one(unconfigured: Live) -> None:
    key = _operator(unconfigured)
    ok(_send(unconfigured, key, unconfigured.base_url, "/v1/me"))
    doc = problem(
        _send(unconfigured, key, "http://127.0.0.1:8000", "/v1/me"), 401, "signature-invalid"
    )
    assert doc["reason"] == "bad-signature"


def test_a_request_signed_for_another_host_is_refused(unconfigured: Live) -> None:
    key = _operator(unconfigured)
    for host in ("evil.example", "127.0.0.1:8000", "localhost:1"):
        response = _send(unconfigured, key, f"http://{host}", "/v1/me", host=host)
        assert problem(response, 401, "signature-invalid")["reason"] == "wrong-host", host


def test_behind_a_proxy_the_public_url_and_allowed_hosts_verify(behind_proxy: Live) -> None:
    key = _operator(behind_proxy)
    ok(_send(behind_proxy, key, "https://points.example", "/v1/me", host="points.example"))
    ok(_send(behind_proxy, key, "https://points.example", "/v1/me", host="10.0.0.1:8000"))
    ok(_send(behind_proxy, key, "http://api.internal:8000", "/v1/me", host="api.internal:8000"))
    ok(_send(behind_proxy, key, "http://admin.internal:9443", "/v1/me", host="admin.internal:9443"))
    for host in ("evil.example", "admin.internal:9444"):
        response = _send(behind_proxy, key, f"http://{host}", "/v1/me", host=host)
        assert problem(response, 401, "signature-invalid")["reason"] == "bad-signature", host
