"""The partner client: signed requests to the coalition API, for the demo, tests and benchmarks.

Every request is signed per the contract (RFC 9421 through the ``http-message-signatures``
library): covered ``"@method"``, ``"@target-uri"`` and, with a body, ``"content-digest"``
(``Content-Digest: sha-256=...``); parameters ``created``, ``keyid``, ``alg`` and a random
``nonce``. Every ``POST`` carries an ``Idempotency-Key``; a retry reuses it (and is signed
afresh, with a new ``created`` and ``nonce``). Retries happen only after a connection error
or timeout, a ``5xx``, or ``409 idempotency-key-in-use``, with bounded exponential backoff::

    client = CoalitionClient("http://127.0.0.1:8000", "key_01J...", secret="<base64url secret>")
    member = client.create_member().data["member_id"]
    txn = client.earn(member, reference="order-1", amount="12.50", currency="EUR").data

An error answer raises :class:`ProblemError` with the RFC 9457 problem document. One client
holds one ``requests.Session``; give each thread its own client.
"""

from __future__ import annotations

import base64
import json as jsonlib
import random
import secrets
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from http_message_signatures import HTTPMessageSigner, MappingKeyResolver
from http_message_signatures.algorithms import ED25519, HMAC_SHA256

ALGS = ("hmac-sha256", "ed25519")
#: What the client signs, besides ``content-digest`` for a request with a body.
COVERED_COMPONENTS = ("@method", "@target-uri")
SIGNATURE_LABEL = "sig1"
#: Methods retried after a 5xx (POST is safe to retry: it carries an Idempotency-Key).
RETRIED_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "POST"})
MAX_RETRY_AFTER_S = 30.0


class ProblemError(Exception):
    """An error answer: the HTTP status and its RFC 9457 problem document."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(f"{status} {self.code}: {problem.get('detail') or problem.get('title')}")

    @property
    def code(self) -> str:
        """The last segment of the problem ``type`` (``insufficient-points``...)."""
        return str(self.problem.get("type") or "about:blank").rstrip("/").rsplit("/", 1)[-1]

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail") or "")


@dataclass(frozen=True, slots=True)
class ApiResponse:
    """A successful answer: its status, the decoded JSON (or text; None when empty), headers."""

    status: int
    data: Any
    headers: Mapping[str, str] = field(repr=False)

    @property
    def replayed(self) -> bool:
        """True when the server answered from its idempotency record (a repeated POST)."""
        return self.headers.get("Idempotent-Replayed", "").lower() == "true"


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return _rfc3339(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _rfc3339(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _decode_secret(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        return secret
    text = secret.strip()
    if any(c in text for c in "+/="):
        raise ValueError("the secret is base64url without padding, as the service shows it")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CoalitionClient:
    """A signed client for the partner API (and any other ``/v1`` path through :meth:`request`).

    ``secret``: an hmac-sha256 key's secret, base64url as the service showed it (or the decoded
    32 bytes); or an Ed25519 private key (``cryptography``), whose public key is registered.
    ``alg`` defaults to what the key material is. ``retries`` bounds the retries (not
    attempts); ``backoff`` is the first delay in seconds, doubled each time, with jitter.
    """

    def __init__(
        self,
        base_url: str,
        key_id: str,
        secret: str | bytes | Ed25519PrivateKey | None = None,
        alg: str | None = None,
        *,
        session: requests.Session | None = None,
        retries: int = 3,
        timeout: float = 30.0,
        backoff: float = 0.25,
        max_backoff: float = 5.0,
    ) -> None:
        if secret is None:
            raise ValueError("secret: an hmac secret or an Ed25519 private key is required")
        inferred = "ed25519" if isinstance(secret, Ed25519PrivateKey) else "hmac-sha256"
        if alg is not None and alg != inferred:
            raise ValueError(f"alg {alg!r} does not match the key material ({inferred})")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.key_id = key_id
        self.alg = inferred
        self.retries = retries
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.session = session or requests.Session()
        signing_key: bytes | Ed25519PrivateKey
        if isinstance(secret, Ed25519PrivateKey):
            signing_key = secret
        else:
            signing_key = _decode_secret(secret)
            if len(signing_key) != 32:
                raise ValueError("an hmac-sha256 secret is 32 bytes (43 base64url characters)")
        self._signer = HTTPMessageSigner(
            signature_algorithm=ED25519 if self.alg == "ed25519" else HMAC_SHA256,
            key_resolver=MappingKeyResolver(private_keys={key_id: signing_key}, public_keys={}),
        )

    def __enter__(self) -> CoalitionClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    # --- the generic request ----------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> ApiResponse:
        """Send a signed request to ``base_url + path``; retry as the module says.

        ``json`` (when not None) is the body; ``params`` the query (None values left out).
        A ``POST`` gets ``idempotency_key`` or a new random one, the same on every retry.
        """
        method = method.upper()
        if not path.startswith("/"):
            raise ValueError("path must start with /")
        body = None
        if json is not None:
            body = jsonlib.dumps(json, separators=(",", ":"), default=_json_default).encode()
        headers = {"Accept": "application/json, application/problem+json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        elif idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        attempt = 0
        while True:
            try:
                response = self._send(method, self.base_url + path, query, headers, body)
            except (requests.ConnectionError, requests.Timeout):
                if attempt >= self.retries:
                    raise
                self._pause(attempt, None)
                attempt += 1
                continue
            if attempt < self.retries and self._retryable(method, response):
                self._pause(attempt, response.headers.get("Retry-After"))
                attempt += 1
                continue
            return self._result(response)

    def _send(
        self,
        method: str,
        url: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> requests.Response:
        prepared = self.session.prepare_request(
            requests.Request(method, url, params=query, headers=dict(headers), data=body)
        )
        self.sign(prepared)
        return self.session.send(prepared, timeout=self.timeout, allow_redirects=False)

    def sign(self, prepared: requests.PreparedRequest) -> requests.PreparedRequest:
        """Sign a prepared request in place (new ``created`` and ``nonce``) and return it."""
        body = prepared.body
        if isinstance(body, str):
            body = prepared.body = body.encode()
        if body is not None and not isinstance(body, bytes):
            raise TypeError("only in-memory bodies can be signed")
        for name in ("Signature", "Signature-Input", "Content-Digest"):
            prepared.headers.pop(name, None)
        self._signer.sign(
            prepared,
            key_id=self.key_id,
            created=datetime.now(UTC),
            nonce=secrets.token_urlsafe(16),
            label=SIGNATURE_LABEL,
            covered_component_ids=COVERED_COMPONENTS,
            body=body or None,  # Content-Digest (sha-256) and its coverage when there is a body
        )
        return prepared

    @staticmethod
    def _retryable(method: str, response: requests.Response) -> bool:
        if response.status_code >= 500:
            return method in RETRIED_METHODS
        if response.status_code == 409:
            problem = _problem(response)
            return str(problem.get("type", "")).endswith("idempotency-key-in-use")
        return False

    def _pause(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)  # noqa: S311
        if retry_after is not None and retry_after.strip().isdigit():
            delay = max(delay, min(float(retry_after), MAX_RETRY_AFTER_S))
        if delay > 0:
            time.sleep(delay)

    @staticmethod
    def _result(response: requests.Response) -> ApiResponse:
        if response.status_code >= 400:
            raise ProblemError(response.status_code, _problem(response))
        return ApiResponse(response.status_code, _decoded(response), response.headers)

    # --- the partner API ----------------------------------------------------------------------

    def me(self) -> ApiResponse:
        """``GET /v1/me``: the partner, its active rate card, the key's scopes."""
        return self.request("GET", "/v1/me")

    def create_member(
        self, member_id: str | None = None, *, idempotency_key: str | None = None
    ) -> ApiResponse:
        """``POST /v1/members``: 201 with a new member, 200 for an existing ``member_id``."""
        body = {} if member_id is None else {"member_id": member_id}
        return self.request("POST", "/v1/members", body, idempotency_key=idempotency_key)

    def balance(self, member_id: str) -> ApiResponse:
        """``GET /v1/members/{member_id}/balance``."""
        return self.request("GET", f"/v1/members/{_segment(member_id)}/balance")

    def earn(
        self,
        member_id: str,
        reference: str,
        amount: str | Decimal | int,
        currency: str,
        occurred_at: datetime | str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> ApiResponse:
        """``POST /v1/earns``: points for a spend of ``amount`` (a decimal string)."""
        body: dict[str, Any] = {
            "member_id": member_id,
            "reference": reference,
            "amount": str(amount),
            "currency": currency,
        }
        if occurred_at is not None:
            body["occurred_at"] = (
                occurred_at if isinstance(occurred_at, str) else _rfc3339(occurred_at)
            )
        return self.request("POST", "/v1/earns", body, idempotency_key=idempotency_key)

    def burn(
        self,
        member_id: str,
        reference: str,
        *,
        points: int | None = None,
        amount: str | Decimal | int | None = None,
        currency: str | None = None,
        basket_amount: str | Decimal | int | None = None,
        idempotency_key: str | None = None,
    ) -> ApiResponse:
        """``POST /v1/burns``: ``points``, or an ``amount`` in ``currency``."""
        body: dict[str, Any] = {"member_id": member_id, "reference": reference}
        if points is not None:
            body["points"] = points
        if amount is not None:
            body["amount"] = str(amount)
        if currency is not None:
            body["currency"] = currency
        if basket_amount is not None:
            body["basket_amount"] = str(basket_amount)
        return self.request("POST", "/v1/burns", body, idempotency_key=idempotency_key)

    def hold(
        self,
        member_id: str,
        reference: str,
        points: int,
        expires_in: int | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> ApiResponse:
        """``POST /v1/holds``: reserve points (``expires_in`` seconds)."""
        body: dict[str, Any] = {"member_id": member_id, "reference": reference, "points": points}
        if expires_in is not None:
            body["expires_in"] = expires_in
        return self.request("POST", "/v1/holds", body, idempotency_key=idempotency_key)

    def get_hold(self, hold_id: str) -> ApiResponse:
        """``GET /v1/holds/{hold_id}``."""
        return self.request("GET", f"/v1/holds/{_segment(hold_id)}")

    def capture(
        self, hold_id: str, points: int | None = None, *, idempotency_key: str | None = None
    ) -> ApiResponse:
        """``POST /v1/holds/{hold_id}/capture``: all held points, or ``points`` of them."""
        body = {} if points is None else {"points": points}
        path = f"/v1/holds/{_segment(hold_id)}/capture"
        return self.request("POST", path, body, idempotency_key=idempotency_key)

    def void(self, hold_id: str, *, idempotency_key: str | None = None) -> ApiResponse:
        """``POST /v1/holds/{hold_id}/void``."""
        path = f"/v1/holds/{_segment(hold_id)}/void"
        return self.request("POST", path, {}, idempotency_key=idempotency_key)

    def reverse(
        self,
        txn_id: str,
        reference: str,
        points: int | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> ApiResponse:
        """``POST /v1/transactions/{txn_id}/reversals``: whole, or ``points`` of it."""
        body: dict[str, Any] = {"reference": reference}
        if points is not None:
            body["points"] = points
        path = f"/v1/transactions/{_segment(txn_id)}/reversals"
        return self.request("POST", path, body, idempotency_key=idempotency_key)

    def get_transaction(self, txn_id: str) -> ApiResponse:
        """``GET /v1/transactions/{txn_id}``."""
        return self.request("GET", f"/v1/transactions/{_segment(txn_id)}")

    def list_transactions(
        self,
        *,
        member_id: str | None = None,
        kind: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> ApiResponse:
        """``GET /v1/transactions``: one page, ``{"data", "has_more", "next_cursor"}``."""
        params = {
            "member_id": member_id,
            "kind": kind,
            "since": since,
            "until": until,
            "limit": limit,
            "cursor": cursor,
        }
        return self.request("GET", "/v1/transactions", params=params)

    def iter_transactions(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every transaction matching ``filters`` (as :meth:`list_transactions`), page by page."""
        cursor = filters.pop("cursor", None)
        while True:
            page = self.list_transactions(cursor=cursor, **filters).data
            yield from page["data"]
            if not page.get("has_more"):
                return
            cursor = page["next_cursor"]


def _query_value(value: Any) -> str:
    if isinstance(value, datetime):
        return _rfc3339(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _decoded(response: requests.Response) -> Any:
    if not response.content:
        return None
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        return response.json()
    return response.text


def _problem(response: requests.Response) -> dict[str, Any]:
    try:
        data = _decoded(response)
    except ValueError:
        data = None
    if isinstance(data, dict):
        return data
    return {
        "type": "about:blank",
        "title": response.reason or "Error",
        "status": response.status_code,
        "detail": (response.text or "")[:500],
    }
