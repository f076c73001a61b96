"""Bulk earns: ``POST /v1/earn-batches`` (1 to 500 earns in one signed, idempotent request,
a result per item) and the row decoding ``coalition import earns`` shares with it.

Each item goes through the same rules as ``POST /v1/earns`` (its shape by
:class:`~api.structs.EarnCreate`, then :meth:`~partners.operations.Operations.earn_many`), and
gets ``created``, ``duplicate`` (its reference was already used: nothing changed) or
``rejected`` with the problem document a single earn would get.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller
from litestar.types import Scope
from msgspec import Meta, Struct

from api.auth import partner, signed
from api.decoding import decode, decode_fields
from api.docs import SIGNED
from api.handlers import Call, operation
from api.problems import error_body
from api.structs import EarnCreate, Request
from coalition.errors import CoalitionError, DuplicateReference
from coalition.ledger import Posted
from partners.operations import EarnItem
from partners.queries import TransactionOut, transaction_out

#: Earns in one ``POST /v1/earn-batches`` at most.
EARN_BATCH_MAX_ITEMS = 500


class EarnBatchCreate(Request):
    """``POST /v1/earn-batches``: 1 to 500 earns, each shaped like ``POST /v1/earns``.

    Each item is checked on its own: one that is not a valid earn body is that item's
    ``rejected`` result (with the problem ``POST /v1/earns`` would give), not the batch's."""

    earns: Annotated[
        list[dict[str, Any]],
        Meta(
            min_length=1,
            max_length=EARN_BATCH_MAX_ITEMS,
            description="Objects shaped like the body of POST /v1/earns: member_id, reference, "
            "amount, currency, occurred_at?",
        ),
    ]


class EarnBatchResult(Struct, omit_defaults=True):
    """One item's result, in the order given: its transaction, or its problem document."""

    reference: str | None
    status: Literal["created", "duplicate", "rejected"]
    transaction: TransactionOut | None = None
    problem: dict[str, object] | None = None


class EarnBatchOut(Struct):
    """The results of a batch of earns, one per item in the order given."""

    results: list[EarnBatchResult]


def _item(data: EarnCreate) -> EarnItem:
    return EarnItem(data.member_id, data.reference, data.amount, data.currency, data.occurred_at)


def earn_from_json(raw: bytes) -> EarnItem:
    """An earn from one JSON object (an NDJSON line), checked as a ``POST /v1/earns`` body."""
    return _item(decode(raw, EarnCreate))


def earn_from_fields(fields: dict[str, Any]) -> EarnItem:
    """An earn from a CSV row's fields (or a batch's item), checked as a ``POST /v1/earns``
    body."""
    return _item(decode_fields(fields, EarnCreate))


def _reference_of(item: dict[str, Any]) -> str | None:
    reference = item.get("reference")
    return reference if isinstance(reference, str) else None


def _problem(scope: Scope, exc: CoalitionError) -> dict[str, object]:
    _, content = error_body(scope, exc)
    doc: dict[str, object] = msgspec.json.decode(content)
    return doc


def _result(
    scope: Scope, reference: str | None, outcome: Posted | CoalitionError
) -> EarnBatchResult:
    if isinstance(outcome, Posted):
        return EarnBatchResult(
            reference, "created", transaction=transaction_out(outcome.transaction)
        )
    status = "duplicate" if isinstance(outcome, DuplicateReference) else "rejected"
    return EarnBatchResult(reference, status, problem=_problem(scope, outcome))  # type: ignore[arg-type]


#: A batch's body may be larger than other requests' 64 KiB: 500 earns with long references
#: and times take about 200 KiB.
MAX_BATCH_BODY_BYTES = 512 * 1024


class EarnBatchController(Controller):
    """``POST /v1/earn-batches`` (scope ``earn``)."""

    path = "/v1"
    before_request = staticmethod(signed)
    security = SIGNED
    tags = ["partner"]  # noqa: RUF012

    @operation(
        "/earn-batches",
        opt=partner("earn"),
        body=EarnBatchCreate,
        problems=(400, 403, 409, 413, 422),
        status_code=200,
        request_max_body_size=MAX_BATCH_BODY_BYTES,
    )
    def earn_batch(self, call: Call[EarnBatchCreate]) -> EarnBatchOut:
        """Up to 500 earns at once; a result per item, in order (``created``, ``duplicate``,
        ``rejected`` with its problem document). The batch is one database transaction."""
        outcomes: list[Posted | CoalitionError | None] = []
        items: list[EarnItem] = []
        references: list[str | None] = []
        for fields in call.data.earns:
            try:
                item = earn_from_fields(fields)
            except CoalitionError as exc:
                outcomes.append(exc)
                references.append(_reference_of(fields))
                continue
            outcomes.append(None)
            references.append(item.reference)
            items.append(item)
        posted = iter(call.services.ops.earn_many(call.partner_id, items, session=call.session))
        results = [
            _result(call.request.scope, reference, outcome or next(posted))
            for reference, outcome in zip(references, outcomes, strict=True)
        ]
        return EarnBatchOut(results=results)
