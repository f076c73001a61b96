"""A real HTTP server for the API tests: uvicorn on a free loopback port, in a background
thread, over its own migrated database (SQLite, and PostgreSQL where the test asks for it),
driven by the stock RFC 9421 client (``requests-http-signature``) with HMAC and Ed25519 keys.

The servers are session-scoped: every test makes its own partners and members through the
operator API, so tests never see each other's data.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from requests_http_signature import HTTPSignatureAuth, algorithms
from sqlalchemy import Engine

from api.app import create_app
from coalition.config import Settings
from coalition.db import make_engine, migrate, session_factory, transaction
from partners.keys import b64url, create_operator_key
from tests.conftest import _pg_clone, _pg_drop, require_postgres

SECRET_KEY = b"s" * 32
_seq = itertools.count()
#: How long a server may take to answer its health check after start.
STARTUP_TIMEOUT_S = 20.0


def unique(prefix: str = "ref") -> str:
    """A reference nobody else in the session uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}-{next(_seq)}"


@dataclass
class Key:
    """A key as its holder has it: the id, the algorithm and what it signs with."""

    key_id: str
    alg: str
    material: bytes  # hmac-sha256: the decoded secret; ed25519: the PEM private key

    def auth(
        self, auth_class: type[HTTPSignatureAuth] = HTTPSignatureAuth, *, use_nonce: bool = True
    ) -> HTTPSignatureAuth:
        """The stock client with its default covered components, and a nonce: tests send
        identical POSTs within a second, which without one are refused as replays
        (partners/replay.py; ``use_nonce=False`` for the client's bare default)."""
        algorithm = algorithms.HMAC_SHA256 if self.alg == "hmac-sha256" else algorithms.ED25519
        return auth_class(
            signature_algorithm=algorithm,
            key=self.material,
            key_id=self.key_id,
            use_nonce=use_nonce,
        )


class StaleAuth(HTTPSignatureAuth):
    """Signs with a ``created`` ten minutes in the past."""

    def get_created(self, request: requests.PreparedRequest) -> dt.datetime:
        return super().get_created(request) - dt.timedelta(minutes=10)


@dataclass
class Client:
    """Signed requests to the live server as one key (``key=None``: unsigned)."""

    base_url: str
    key: Key | None
    auth_class: type[HTTPSignatureAuth] = HTTPSignatureAuth
    session: requests.Session = field(default_factory=requests.Session)

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: dict[str, Any] | None = None,
        idempotency_key: str | None = "auto",
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        """Send one request; a POST gets a fresh Idempotency-Key unless one (or None) is given."""
        all_headers = dict(headers or {})
        if method == "POST" and idempotency_key is not None:
            all_headers["Idempotency-Key"] = (
                str(uuid.uuid4()) if idempotency_key == "auto" else idempotency_key
            )
        if json is not None or content is not None:
            all_headers.setdefault("Content-Type", "application/json")
        body = content if content is not None else (None if json is None else _json_bytes(json))
        return self.session.request(
            method,
            self.base_url + path,
            data=body,
            params=params,
            headers=all_headers,
            auth=self.key.auth(self.auth_class) if self.key is not None else None,
            timeout=30,
        )

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> requests.Response:
        return self.request("POST", path, json=json, **kw)

    def patch(self, path: str, json: Any = None, **kw: Any) -> requests.Response:
        return self.request("PATCH", path, json=json, **kw)


def _rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


def ok(response: requests.Response, status: int = 200) -> Any:
    """The JSON body of a response that must have ``status``."""
    assert response.status_code == status, (response.status_code, response.text)
    return response.json()


def problem(response: requests.Response, status: int, kind: str) -> dict[str, Any]:
    """The problem document of a response that must be ``status`` of kind ``kind``."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/problem+json")
    doc: dict[str, Any] = response.json()
    assert doc["type"] == f"/problems/{kind}", doc
    assert doc["status"] == status and doc["title"] and isinstance(doc["detail"], str)
    assert doc["request_id"] == response.headers["X-Request-Id"]
    return doc


@dataclass
class Partner:
    """A partner made through the operator API, with a key and its client."""

    id: str
    currency: str
    key: Key
    client: Client


@dataclass
class Live:
    """A running server, its database and an operator client."""

    base_url: str
    backend: str
    engine: Engine
    operator: Client

    def client(
        self, key: Key | None, auth_class: type[HTTPSignatureAuth] = HTTPSignatureAuth
    ) -> Client:
        return Client(self.base_url, key, auth_class)

    def partner(
        self,
        currency: str = "EUR",
        *,
        scopes: tuple[str, ...] = ("earn", "burn", "read"),
        alg: str = "hmac-sha256",
        earn: str = "1",
        burn: str = "0.01",
        max_burn_share: str | None = None,
    ) -> Partner:
        """A new active partner with a rate card in force and a key with ``scopes``."""
        created = ok(
            self.operator.post(
                "/v1/admin/partners", {"name": unique("partner"), "currency": currency}
            ),
            201,
        )
        card: dict[str, Any] = {
            "earn_points_per_unit": earn,
            "issue_price_per_point": "0.01",
            "burn_value_per_point": burn,
            "reimburse_price_per_point": "0.008",
            # a little in the past (rate cards may start up to 5 minutes back), so that
            # earns with an occurred_at of a moment ago find it in force
            "effective_from": _rfc3339(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=4)),
        }
        if max_burn_share is not None:
            card["max_burn_share"] = max_burn_share
        ok(self.operator.post(f"/v1/admin/partners/{created['id']}/rate-cards", card), 201)
        key = self.partner_key(created["id"], scopes=scopes, alg=alg)
        return Partner(created["id"], currency, key, self.client(key))

    def partner_key(
        self, partner_id: str, *, scopes: tuple[str, ...], alg: str = "hmac-sha256"
    ) -> Key:
        """A new key of the partner, made through POST /v1/admin/partners/{id}/keys."""
        body: dict[str, Any] = {"alg": alg, "scopes": list(scopes)}
        private = None
        if alg == "ed25519":
            private = Ed25519PrivateKey.generate()
            body["public_key"] = b64url(
                private.public_key().public_bytes(
                    serialization.Encoding.Raw, serialization.PublicFormat.Raw
                )
            )
        made = ok(self.operator.post(f"/v1/admin/partners/{partner_id}/keys", body), 201)
        assert made["scopes"] == list(scopes) and made["alg"] == alg
        if private is None:
            assert isinstance(made["secret"], str)
            secret = made["secret"]
            return Key(
                made["key_id"], alg, base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
            )
        assert "secret" not in made
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return Key(made["key_id"], alg, pem)

    def role_key(self, role: str, alg: str = "hmac-sha256") -> Key:
        """A new operator or finance key, made by the operator."""
        made = ok(self.operator.post("/v1/admin/operator-keys", {"role": role, "alg": alg}), 201)
        secret = made["secret"]
        return Key(made["key_id"], alg, base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4)))

    def member(self, partner: Partner | None = None, points: int = 0) -> str:
        """A new member, holding ``points`` earned at ``partner`` (1 point per unit)."""
        owner = partner or self.partner()
        member_id: str = ok(owner.client.post("/v1/members", {}), 201)["member_id"]
        if points:
            ok(
                owner.client.post(
                    "/v1/earns",
                    {
                        "member_id": member_id,
                        "reference": unique("seed"),
                        "amount": str(points),
                        "currency": owner.currency,
                    },
                ),
                201,
            )
        return member_id


def _operator_key(engine: Engine) -> Key:
    with transaction(session_factory(engine)) as s:
        new = create_operator_key(s, secret_key=SECRET_KEY, now=dt.datetime.now(dt.UTC))
    assert new.secret is not None
    return Key(new.key.id, "hmac-sha256", base64.urlsafe_b64decode(new.secret + "="))


def serve(
    url: str,
    backend: str,
    *,
    routes: Sequence[Any] = (),
    ready: int = 200,
    **settings_changes: Any,
) -> Iterator[Live]:
    """Run the app over ``url`` on a free loopback port until the generator is closed; the
    server is ready when its health check answers ``ready``. ``routes`` are added to the app;
    ``settings_changes`` change its settings."""
    settings = Settings(
        database_url=url,
        secret_key=SECRET_KEY,
        public_url="http://api.coalition.test",
        # the suite sends thousands of requests a minute, many failing on purpose;
        # tests/api/test_rate_limits.py serves with limits of its own
        rate_limit_per_key=0,
        rate_limit_failures_per_address=0,
    )
    settings = replace(settings, **settings_changes)
    app = create_app(settings)
    for route in routes:
        app.register(route)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="on",
            # Longer than any pause of a test's client: a server closing an idle keep-alive
            # connection just as a client reuses it drops that request (HTTP/1.1's race, which
            # real clients survive by retrying with the same Idempotency-Key); at uvicorn's 5 s
            # a loaded machine hit it in tests that assert the server answers every request.
            timeout_keep_alive=120,
        )
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{backend}", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    base_url = None
    while time.monotonic() < deadline:
        if server.started and base_url is None:
            port = server.servers[0].sockets[0].getsockname()[1]
            base_url = f"http://127.0.0.1:{port}"
        if base_url is not None:
            try:
                if requests.get(base_url + "/v1/health", timeout=2).status_code == ready:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass  # not up yet, or slow to answer on a busy machine: ask again
        time.sleep(0.02)
    else:
        server.should_exit = True
        raise RuntimeError(f"the API server did not come up within {STARTUP_TIMEOUT_S} s")
    engine = make_engine(url)
    try:
        operator = Client(base_url, _operator_key(engine) if ready == 200 else None)
        yield Live(base_url, backend, engine, operator)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        engine.dispose()


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The API over a migrated SQLite database."""
    path: Path = tmp_path_factory.mktemp("api") / "api.sqlite3"
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    yield from serve(url, "sqlite")


@pytest.fixture(scope="session")
def live_pg() -> Iterator[Live]:
    """The API over a migrated PostgreSQL database (concurrency tests)."""
    require_postgres()
    engine, name = _pg_clone()
    url = engine.url.render_as_string(hide_password=False)
    engine.dispose()
    try:
        yield from serve(url, "postgres")
    finally:
        _pg_drop(name)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest) -> Live:
    """The API on each backend."""
    name = "live" if request.param == "sqlite" else "live_pg"
    value: Live = request.getfixturevalue(name)
    return value
