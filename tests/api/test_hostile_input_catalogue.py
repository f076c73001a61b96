"""The hostile-input catalogue: every operation of the OpenAPI document gets NUL bytes,
trailing newlines, over-long strings, repeated keys, deep nesting, huge numbers, decimal strings
past the ledger's bounds and times at the calendar's edge in each of its inputs (path, query,
body), and answers each with a 4xx problem document in words (never a raw regular expression),
writing nothing.

The well-formed request each bad one departs from is made from the document itself (examples,
enums, bounds) with real ids of the test's own partner, member, hold and transaction; its body
is checked to decode (so the bad value, not the rest, is what gets refused).
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
import requests

import api.bulk
import api.payments_structs
import api.settlement_structs
import api.structs
import api.webhooks
from tests.api.conftest import Client, Live, ok, problem, unique
from tests.api.test_input_strictness import row_counts

#: Depth of the nested arrays sent (well past any decoder's recursion limit, under 64 KiB).
DEPTH = 10_000
HUGE = "1" + "0" * 400  # a JSON number no integer or float field holds
#: The query parameters that take a time.
TIME_QUERIES = frozenset({"since", "until", "at"})


@dataclass(frozen=True)
class Bad:
    """One hostile request: where the bad value went and the request itself."""

    label: str
    path: str
    params: dict[str, str]
    content: bytes | None


@dataclass(frozen=True)
class World:
    """Real objects for the ids a well-formed request names."""

    partner: Client
    partner_id: str
    member_id: str
    hold_id: str
    txn_id: str
    key_id: str


@pytest.fixture(scope="module")
def world(api: Live) -> World:
    partner = api.partner("EUR", scopes=("earn", "burn", "read", "webhooks", "statements"))
    member = api.member(partner, 100)
    hold = ok(
        partner.client.post("/v1/holds", {"member_id": member, "reference": unique(), "points": 1}),
        201,
    )
    txn = ok(partner.client.get("/v1/transactions", params={"member_id": member}))["data"][0]
    return World(partner.client, partner.id, member, hold["id"], txn["id"], partner.key.key_id)


@pytest.fixture(scope="module")
def document(api: Live) -> dict[str, Any]:
    response = requests.get(api.base_url + "/schema/openapi.json", timeout=10)
    return ok(response)  # type: ignore[no-any-return]


#: Where the request structs live, by their OpenAPI component names.
STRUCT_MODULES = (
    api.structs,
    api.bulk,
    api.settlement_structs,
    api.webhooks,
    api.payments_structs,
)


def _schema(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _plain(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The non-null alternative of an optional field's schema."""
    schema = _schema(document, schema)
    outer = {k: v for k, v in schema.items() if k not in ("oneOf", "anyOf")}
    for option in schema.get("oneOf", schema.get("anyOf", [])):
        if option.get("type") != "null":
            return {**_schema(document, option), **outer}
    return schema


def _good_value(name: str, schema: dict[str, Any], world: World) -> Any:
    real = {
        "member_id": world.member_id,
        "reference": unique(),
        "funded_by": "coalition",
        "currency": "EUR",
        "alg": "hmac-sha256",
        "role": "finance",
        "status": "active",
    }
    if name in real:
        return real[name]
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    if schema.get("examples"):
        return schema["examples"][0]
    kind = schema.get("type")
    if kind == "integer":
        return max(1, schema.get("minimum", 1))
    if kind == "array":
        items = schema.get("items", {})
        return [items["enum"][0]] if "enum" in items else []
    if schema.get("format") == "date-time":
        return "2099-01-01T00:00:00Z"
    if kind == "boolean":
        return False
    if schema.get("pattern", "").startswith("^(?:[0-9]"):
        return "1"  # a decimal string
    return "x"


def _good_body(
    document: dict[str, Any], schema: dict[str, Any], world: World
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A well-formed body (every field with a good value) and the plain schema of each field."""
    schema = _schema(document, schema)
    fields = {n: _plain(document, s) for n, s in schema.get("properties", {}).items()}
    body = {n: _good_value(n, s, world) for n, s in fields.items()}
    if "earns" in fields:  # an earn batch: one item shaped like the body of POST /v1/earns
        body["earns"] = [
            _good_body(document, {"$ref": "#/components/schemas/EarnCreate"}, world)[0]
        ]
    if "points" in body and "amount" in body and "basket_amount" in body:
        del body["amount"], body["currency"], body["basket_amount"]  # a burn takes one of them
    body.pop("public_key", None)  # hmac keys take none
    return body, fields


def _bad_strings(value: str) -> Iterator[tuple[str, str]]:
    yield "NUL", value + "\x00"
    yield "NUL inside", value[:1] + "\x00" + value[1:]
    yield "trailing newline", value + "\n"
    yield "trailing CRLF", value + "\r\n"
    yield "over-long", value + "x" * 20_000


def _bad_numbers() -> Iterator[tuple[str, str]]:
    yield "huge number", HUGE
    yield "huge negative number", "-" + HUGE
    yield "huge float", "1e400"
    yield "long fraction", "1." + "1" * 5000


def _bad_times() -> Iterator[tuple[str, str]]:
    """Valid RFC 3339 times whose UTC lies outside what Python's calendar holds, or near it."""
    yield "year 1 with an offset", "0001-01-01T00:00:00+01:00"
    yield "year 9999 with an offset", "9999-12-31T23:59:59-01:00"
    yield "year 1", "0001-01-01T00:00:00Z"
    yield "year 9999", "9999-12-31T23:59:59.999999Z"
    yield "before 1970", "1969-12-31T23:59:59Z"
    yield "year 1970 pushed before it by its offset", "1970-01-01T00:30:00+01:00"


def _bad_decimals() -> Iterator[tuple[str, str]]:
    """Decimal strings of the documented shape but past what the ledger can hold."""
    yield "largest rate shape", "9" * 18 + "." + "9" * 12
    yield "10^16", "1" + "0" * 16
    yield "largest amount shape", "9" * 10 + ".9999"
    yield "just past the amount bound", "1000000001"


def _encode(body: dict[str, Any], name: str, raw: str) -> bytes:
    """``body`` with the field ``name`` set to the raw JSON text ``raw``."""
    marker = f"__{uuid.uuid4().hex}__"
    text = json.dumps({**body, name: marker})
    return text.replace(json.dumps(marker), raw).encode()


def _bad_requests(
    document: dict[str, Any], path: str, operation: dict[str, Any], world: World
) -> Iterator[Bad]:
    ids = {
        "member_id": world.member_id,
        "hold_id": world.hold_id,
        "txn_id": world.txn_id,
        "partner_id": world.partner_id,
        "key_id": world.key_id,
    }
    params = operation.get("parameters", [])
    path_params = {p["name"]: ids.get(p["name"], "x") for p in params if p["in"] == "path"}
    good_path = path.format(**path_params)
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    body: dict[str, Any] | None = None
    fields: dict[str, dict[str, Any]] = {}
    if content is not None:
        body, fields = _good_body(document, content["schema"], world)
        name = content["schema"]["$ref"].rsplit("/", 1)[1]
        struct = next(getattr(m, name) for m in STRUCT_MODULES if hasattr(m, name))
        msgspec.json.decode(json.dumps(body).encode(), type=struct, strict=True)
    good = json.dumps(body).encode() if body is not None else None
    for name, value in path_params.items():
        for label, bad in _bad_strings(value):
            changed = path.format(**{**path_params, name: urllib.parse.quote(bad, safe="")})
            yield Bad(f"path {name}: {label}", changed, {}, good)
    for param in (p for p in params if p["in"] == "query"):
        name = param["name"]
        numeric = _plain(document, param.get("schema", {})).get("type") in ("integer", "number")
        times = _bad_times() if name in TIME_QUERIES else []
        for label, bad in [*_bad_strings("x"), *(_bad_numbers() if numeric else []), *times]:
            yield Bad(f"query {name}: {label}", good_path, {name: bad}, good)
    if body is None:
        return
    for name, schema in fields.items():
        kind = schema.get("type")
        if kind == "string" or (kind is None and isinstance(body.get(name), str)):
            for label, bad in _bad_strings(str(body.get(name, "x"))):
                yield Bad(
                    f"body {name}: {label}", good_path, {}, _encode(body, name, json.dumps(bad))
                )
        for label, raw in _bad_numbers():
            yield Bad(f"body {name}: {label}", good_path, {}, _encode(body, name, raw))
        if schema.get("pattern", "").startswith(("^(?:[0-9]", "^(?:-?[0-9]")):
            for label, bad in _bad_decimals():
                yield Bad(
                    f"body {name}: {label}", good_path, {}, _encode(body, name, json.dumps(bad))
                )
        if schema.get("format") == "date-time":
            for label, bad in _bad_times():
                yield Bad(
                    f"body {name}: {label}", good_path, {}, _encode(body, name, json.dumps(bad))
                )
        nested = "[" * DEPTH + "]" * DEPTH
        yield Bad(f"body {name}: deep nesting", good_path, {}, _encode(body, name, nested))
        duplicated = _encode(body, name, json.dumps(body.get(name, 1)))[:-1]
        duplicated += f", {json.dumps(name)}: {json.dumps(body.get(name, 1))}}}".encode()
        yield Bad(f"body {name}: repeated key", good_path, {}, duplicated)
    yield Bad("body: deep nesting", good_path, {}, ("[" * DEPTH + "]" * DEPTH).encode())
    yield Bad("body: NUL key", good_path, {}, _encode(body, "x\x00", "1"))


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            has_input = operation.get("requestBody") or any(
                p["in"] in ("path", "query") for p in operation.get("parameters", [])
            )
            if has_input:
                yield method.upper(), path, operation


def test_every_operation_refuses_hostile_input_with_a_problem_and_writes_nothing(
    api: Live, world: World, document: dict[str, Any]
) -> None:
    tried = 0
    operations = list(_operations(document))
    assert len(operations) >= 20, "the document lists the API's operations"
    for method, path, operation in operations:
        client = api.operator if path.startswith("/v1/admin") else world.partner
        for bad in _bad_requests(document, path, operation, world):
            before = row_counts(api)
            response = client.request(method, bad.path, params=bad.params, content=bad.content)
            where = f"{method} {path} {bad.label}"
            assert 400 <= response.status_code < 500, (where, response.status_code, response.text)
            problem(response, response.status_code, response.json()["type"].rsplit("/", 1)[1])
            assert "regex" not in response.text, (where, response.text)
            assert row_counts(api) == before, where
            tried += 1
    assert tried > 500
