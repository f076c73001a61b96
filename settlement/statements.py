"""Statement documents: built at the close from the lines the database wrote and formatted
(:mod:`settlement.lines`), hashed and signed (in a second thread, while the database builds
the next statement's lines, at most two statements at a time, so the close's memory is
bounded by the largest statement, not by the period), stored, announced, read back, and
re-signed on a status change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from msgspec import Struct
from sqlalchemy import update
from sqlalchemy.orm import Session

from coalition.errors import invariant, required
from coalition.shapes import row_as
from partners.keys import b64url
from partners.webhooks import outbox
from partners.webhooks.events import EventType
from settlement.canonical import (
    canonical_json,
    canonical_json_with,
    content_sha256,
    signature_part,
    signed_document,
)
from settlement.document import (
    CrossBrandRow,
    PeriodRef,
    StatementStatus,
    StatementTotals,
    plain,
)
from settlement.lines import (
    Totals,
    lines_and_totals,
    rfc3339,
)
from settlement.models import Period, Statement
from settlement.signing import Signer


def totals_of(statement: Statement) -> Totals:
    """An issued statement's totals, from its stored columns."""
    return Totals(
        lines=statement.line_count,
        issued_points=statement.issued_points,
        issued_minor=statement.issued_minor,
        earn_reversed_minor=statement.earn_reversed_minor,
        redeemed_points=statement.redeemed_points,
        reimbursed_minor=statement.reimbursed_minor,
        burn_reversed_minor=statement.burn_reversed_minor,
        adjustments_minor=statement.adjustments_minor,
    )


def _cross_brand_document(rows: Sequence[tuple[str | None, int]]) -> list[CrossBrandRow]:
    ordered = sorted(rows, key=lambda r: (r[0] is None, r[0] or ""))
    return [CrossBrandRow(origin, points) for origin, points in ordered]


def document_head(
    statement: Statement,
    period: Period,
    totals: Totals,
    cross_brand: Sequence[tuple[str | None, int]],
) -> dict[str, Any]:
    """The statement's document (status ``issued``) without its lines, content hash and
    signature, as plain JSON values."""
    return {
        "id": statement.id,
        "partner_id": statement.partner_id,
        "period": plain(period_ref(period)),
        "currency": statement.currency,
        "status": "issued",
        "totals": plain(totals.document(statement.currency)),
        "cross_brand": plain(_cross_brand_document(cross_brand)),
    }


@dataclass(frozen=True, slots=True)
class _Sealed:
    """A statement's canonical document, its hash, and its signature by key ``kid``."""

    canonical: bytes
    digest: str
    kid: str
    signature: str


def _seal(head: dict[str, Any], lines: bytes, signer: Signer) -> _Sealed:
    canonical = canonical_json_with(head, "lines", lines)
    signature = b64url(signer.sign(canonical))
    return _Sealed(canonical, content_sha256(canonical), signer.kid, signature)


def issue_all(
    session: Session,
    statements: Sequence[Statement],
    period: Period,
    cross_brand: Mapping[str, Sequence[tuple[str | None, int]]],
    *,
    signer: Signer,
) -> None:
    """Write each statement's totals, its issued hash and its signed document (once). A
    statement's lines' canonical JSON comes from the database as one text, spliced into the
    document; the splicing, hashing and signing run in a second thread (hashlib and the
    Ed25519 signature release the GIL) while the database builds the next statement's lines:
    at most two statements are in memory at once, whatever the period's size."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="seal") as sealer:
        pending: tuple[Statement, Totals, Future[_Sealed]] | None = None
        for statement in statements:
            lines, totals = lines_and_totals(session, statement)
            head = document_head(
                statement, period, totals, cross_brand.get(statement.partner_id, ())
            )
            sealing = sealer.submit(_seal, head, lines, signer)
            del lines  # the sealer holds them now
            if pending is not None:
                _store(session, period, *pending)
            pending = (statement, totals, sealing)
        if pending is not None:
            _store(session, period, *pending)


def _store(
    session: Session, period: Period, statement: Statement, totals: Totals, sealing: Future[_Sealed]
) -> None:
    sealed = sealing.result()
    session.execute(
        update(Statement)
        .where(Statement.id == statement.id, Statement.issued_sha256.is_(None))
        .values(
            line_count=totals.lines,
            issued_points=totals.issued_points,
            issued_minor=totals.issued_minor,
            earn_reversed_minor=totals.earn_reversed_minor,
            redeemed_points=totals.redeemed_points,
            reimbursed_minor=totals.reimbursed_minor,
            burn_reversed_minor=totals.burn_reversed_minor,
            adjustments_minor=totals.adjustments_minor,
            net_minor=totals.net_minor,
            direction=totals.direction,
            issued_sha256=sealed.digest,
            document=sealed.canonical.decode("utf-8"),
            content_sha256=sealed.digest,
            signing_kid=sealed.kid,
            signature=sealed.signature,
        )
        .execution_options(synchronize_session=False)
    )
    session.refresh(statement)
    announce(session, statement, period, EventType.STATEMENT_ISSUED, at=statement.issued_at)


def period_ref(period: Period) -> PeriodRef:
    """A period as a statement names it."""
    return PeriodRef(period.id, rfc3339(period.start_at), rfc3339(period.end_at))


class StatementSummary(Struct):
    """A statement in a list: its totals and status, without its lines."""

    id: str
    partner_id: str
    period: PeriodRef
    currency: str
    status: StatementStatus
    lines: int
    totals: StatementTotals
    issued_at: datetime
    content_sha256: str
    issued_sha256: str
    payment_reference: str | None
    paid_at: datetime | None


def summary_out(statement: Statement, period: Period) -> StatementSummary:
    """An issued statement without its lines, from its columns (its document is not read): the
    API's answer and the data of the statement's webhook events."""
    invariant(statement.period_id == period.id, "an issued statement of its period")
    return row_as(
        StatementSummary,
        statement,
        period=period_ref(period),
        lines=statement.line_count,
        totals=totals_of(statement).document(statement.currency),
        content_sha256=statement.content_sha256 or "",
        issued_sha256=required(statement.issued_sha256, "an issued statement"),
    )


def announce(
    session: Session, statement: Statement, period: Period, event_type: EventType, at: datetime
) -> None:
    """Note the statement's webhook event (``statement.issued``, ``statement.settled``) for
    its partner, with the statement as loaded (the caller refreshed it after its update)."""
    outbox.note(session, event_type, statement.partner_id, summary_out(statement, period), at=at)


def resign(session: Session, statement: Statement, status: str, signer: Signer) -> None:
    """Move the statement to ``status``: the same lines and totals, a new signed document."""
    document = json.loads(required(statement.document, "an issued statement's document"))
    document["status"] = status
    canonical = canonical_json(document)
    signed = signed_document(document, signer.kid, signer.sign(canonical))
    session.execute(
        update(Statement)
        .where(Statement.id == statement.id)
        .values(
            status=status,
            document=canonical.decode("utf-8"),
            content_sha256=signed["content_sha256"],
            signing_kid=signer.kid,
            signature=signed["signature"]["value"],
        )
        .execution_options(synchronize_session=False)
    )
    session.refresh(statement)


def document_of(statement: Statement) -> dict[str, Any]:
    """The statement's signed document, exactly as signed: the plain values its canonical JSON
    is made of (what the exports, the hash and the signature are computed from, as the
    verifier reads them back); its shape is :class:`~settlement.document.StatementDocument`."""
    document: dict[str, Any] = json.loads(
        required(statement.document, "an issued statement's document")
    )
    document["content_sha256"] = statement.content_sha256
    document["signature"] = signature_part(
        required(statement.signing_kid, "an issued statement is signed"),
        required(statement.signature, "an issued statement is signed"),
    )
    return document
