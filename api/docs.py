"""OpenAPI helpers: request bodies, the Idempotency-Key header, problem responses, security.

Handlers decode their bodies themselves (strictly, and inside the idempotency claim, so that
a rejected body is stored and replayed like any other answer), so Litestar does not see a
``data`` parameter on them. :func:`body` declares the body for the OpenAPI document through a
dependency that takes ``data``: Litestar documents a dependency's ``data`` as the request body,
and never runs a dependency the handler does not ask for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar._openapi.schema_generation import SchemaCreator
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.di import Provide
from litestar.enums import MediaType
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Schema,
    SecurityScheme,
)
from litestar.params import HeaderParameter
from litestar.typing import FieldDefinition

from api.problems import KINDS, PROBLEM_JSON
from api.structs import Problem, full_match

SECURITY_SCHEME = "httpMessageSignature"

SIGNATURE_DESCRIPTION = """\
Every `/v1` request except `GET /v1/health` and `GET /v1/signing-keys` carries an HTTP Message
Signature (RFC 9421) made with an API key:

- headers `Signature-Input` and `Signature` (any label);
- covered components: `"@method"` and `"@target-uri"` (or `"@method"`, `"@authority"`,
  `"@path"` and, with a query, `"@query"`), and `"content-digest"` whenever there is a body;
- `Content-Digest` (RFC 9530, `sha-256` or `sha-512`) of the body bytes;
- parameters: `keyid` (the key id), `created` (within 300 s of the server's clock), `alg`
  (optional; `hmac-sha256` or `ed25519`, must match the key), `expires` and `nonce` (optional;
  a nonce may not repeat within the window).

`hmac-sha256` keys use the 32-byte secret shown once at key creation (base64url); `ed25519`
keys are the partner's own key pair, registered by its raw public key. A stock client works
unchanged, e.g. Python's `requests-http-signature` with its default covered components. A
failure is `401` with problem type `/problems/signature-invalid` and a `reason`.
See docs/signing.md for recipes.
"""

#: The signature scheme. OpenAPI has no type for RFC 9421, so it is described as an API key
#: in the ``Signature`` header, with the whole scheme in the description.
COMPONENTS = Components(
    security_schemes={
        SECURITY_SCHEME: SecurityScheme(
            type="apiKey",
            name="Signature",
            security_scheme_in="header",
            description=SIGNATURE_DESCRIPTION,
        )
    }
)
SIGNED: list[dict[str, list[str]]] = [{SECURITY_SCHEME: []}]

IdempotencyKey = Annotated[
    str,
    HeaderParameter(
        name="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=full_match(r"[\x21-\x7e]+", "1 to 255 visible ASCII characters"),
        description="1-255 visible ASCII characters, unique per request (a UUID). A repeat "
        "with the same body returns the first response with `Idempotent-Replayed: true`.",
    ),
]


def body(struct: type[Any]) -> dict[str, Provide]:
    """``dependencies=`` that document ``struct`` as the JSON request body."""

    def request_body(data: Any) -> None:
        """Documentation only; never called."""

    request_body.__annotations__ = {"data": struct, "return": None}
    return {f"_body_{struct.__name__}": Provide(request_body, sync_to_thread=False)}


def problems(*statuses: int) -> dict[int, ResponseSpec]:
    """``responses=`` for problem documents with these statuses (plus 401, 500 and 503)."""
    wanted = sorted({*statuses, 401, 500, 503})
    specs = {}
    for status in wanted:
        kinds = sorted(code for code, kind in KINDS.items() if kind.status == status)
        specs[status] = ResponseSpec(
            data_container=Problem,
            media_type=PROBLEM_JSON,
            generate_examples=False,
            description="Problem document (RFC 9457); type one of "
            + ", ".join(f"/problems/{k}" for k in kinds),
        )
    return specs


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """Struct schemas that say ``additionalProperties: false`` when the struct refuses unknown
    fields (Litestar's plugin leaves it open), so generated clients and tests know it."""

    def to_openapi_schema(
        self, field_definition: FieldDefinition, schema_creator: SchemaCreator
    ) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        if isinstance(info, msgspec.inspect.StructType) and info.forbid_unknown_fields:
            schema.additional_properties = False
        return schema


@dataclass
class ExportOperation(Operation):
    """The OpenAPI operation of a statement export, whose ``200`` is one of two documents:
    the signed JSON (``?format=json``) or the CSV (``?format=csv``), each with its own
    ``Content-Type`` (Litestar documents one media type per handler)."""

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse):
            ok.content = {
                MediaType.JSON.value: OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.OBJECT, description="The signed statement.")
                ),
                "text/csv": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.STRING,
                        description="One row per line, then `#` rows: totals, hash, signature.",
                    )
                ),
            }
