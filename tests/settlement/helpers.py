"""Shared test helpers: close a period on a test database, read a statement's document, and an
independent model of what a statement must say (its own arithmetic, not the service's SQL)."""

from __future__ import annotations

import itertools
import json
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import select

from coalition.db import transaction
from coalition.models import Transaction
from coalition.money import EXPONENTS
from partners.keys import b64url
from partners.models import RateCard
from settlement.canonical import csv_export, json_export
from settlement.close import Closed, close
from settlement.document import StatementDocument
from settlement.models import Statement
from settlement.signing import public_keys
from settlement.statements import document_of
from tests.conftest import Db

_refs = itertools.count()


def ref(prefix: str = "r") -> str:
    """A fresh reference."""
    return f"{prefix}-{next(_refs)}"


def close_at(db: Db, cut_off: datetime | None = None) -> Closed:
    """Close the open period at ``cut_off`` (default: the cycle's latest cut-off)."""
    return close(
        db.sessions,
        secret_key=db.settings.secret_key,
        cycle=db.settings.settlement_cycle,
        tz=db.settings.tz,
        now=db.clock(),
        cut_off=cut_off,
    )


def documents(db: Db, closed: Closed) -> dict[str, dict[str, Any]]:
    """The signed documents of a closed period, by partner id; each has the one shape the
    service defines (settlement.document.StatementDocument), strictly."""
    with transaction(db.sessions) as s:
        rows = s.scalars(select(Statement).where(Statement.period_id == closed.period.id)).all()
        found = {row.partner_id: document_of(row) for row in rows}
    for document in found.values():
        msgspec.convert(document, StatementDocument, strict=True)
    return found


def export_files(db: Db, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A real statement (earns, a burn, a reversal, cross-brand points) closed on ``db``: its
    JSON and CSV exports and the published signing keys, as files in ``tmp_path``."""
    partner = db.partner("BHD", issue="0.0035", reimburse="0.0031")
    other = db.partner("EUR")
    member = db.member()
    db.ops.earn(other.id, member_id=member, reference=ref(), amount="300", currency="EUR")
    earned = db.ops.earn(
        partner.id, member_id=member, reference=ref(), amount="2230", currency="BHD"
    )
    db.ops.burn(partner.id, member_id=member, reference=ref(), points=405)
    db.ops.reverse(partner.id, earned.transaction.id, reference=ref(), points=7)
    db.clock.advance(hours=1)
    document = documents(db, close_at(db, db.clock()))[partner.id]
    with transaction(db.sessions) as s:
        keys = [
            {"kid": k.kid, "alg": "ed25519", "public_key": b64url(k.public_key)}
            for k in public_keys(s)
        ]
    (tmp_path / "keys.json").write_text(json.dumps(keys))
    (tmp_path / "s.json").write_bytes(json_export(document))
    (tmp_path / "s.csv").write_bytes(csv_export(document))
    return tmp_path / "s.json", tmp_path / "s.csv", tmp_path / "keys.json"


def _minor(value: Decimal, currency: str) -> int:
    return int(value.scaleb(EXPONENTS[currency]).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def expected_totals(
    db: Db, partner_id: str, currency: str, start: datetime, end: datetime
) -> dict[str, int]:
    """Totals recomputed from the transactions table row by row with Decimal arithmetic:
    the test's own model of a statement (minor units)."""
    with transaction(db.sessions) as s:
        cards = {c.id: c for c in s.scalars(select(RateCard))}
        rows = s.scalars(
            select(Transaction).where(
                Transaction.partner_id == partner_id,
                Transaction.posted_at >= start,
                Transaction.posted_at < end,
            )
        ).all()
    out = dict.fromkeys(
        ("issued_points", "issued", "earn_reversed", "redeemed_points", "reimbursed",
         "burn_reversed", "lines"),
        0,
    )  # fmt: skip
    for t in rows:
        if t.kind not in ("earn", "bonus", "earn_reversal", "burn", "burn_reversal"):
            continue
        assert t.rate_card_id is not None
        card = cards[t.rate_card_id]
        out["lines"] += 1
        if t.kind in ("burn", "burn_reversal"):
            amount = _minor(t.points * card.reimburse_price_per_point, currency)
        else:
            amount = _minor(t.points * card.issue_price_per_point, currency)
        if t.kind in ("earn", "bonus"):
            out["issued_points"] += t.points
            out["issued"] += amount
        elif t.kind == "earn_reversal":
            out["earn_reversed"] += amount
        elif t.kind == "burn":
            out["redeemed_points"] += t.points
            out["reimbursed"] += amount
        else:
            out["burn_reversed"] += amount
    out["net"] = out["reimbursed"] - out["issued"] + out["earn_reversed"] - out["burn_reversed"]
    return out


def document_totals(document: dict[str, Any]) -> dict[str, int]:
    """A document's totals in minor units, to compare with :func:`expected_totals`."""
    t = document["totals"]
    currency = document["currency"]

    def minor(name: str) -> int:
        return _minor(Decimal(t[name]), currency)

    return {
        "issued_points": t["issued_points"],
        "issued": minor("issued_amount"),
        "earn_reversed": minor("earn_reversed_amount"),
        "redeemed_points": t["redeemed_points"],
        "reimbursed": minor("reimbursed_amount"),
        "burn_reversed": minor("burn_reversed_amount"),
        "lines": len([line for line in document["lines"] if line["kind"] != "adjustment"]),
        "net": minor("net_amount") - minor("adjustments_amount"),
    }
