"""``coalition demo``: a small run on a fresh SQLite file, end to end through the CLI."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cli.main import main
from coalition.db import make_engine, session_factory, transaction
from coalition.models import Hold, Lot, LotMovement, Transaction
from partners.models import ApiKey, Partner, RateCard
from settlement.check import run_checks

SECTIONS = (
    "Per partner: points",
    "Coalition",
    "Settlement: period per_",
    "operator's money, per currency",
    "points roll-forward",
    "(balances)",
    "Exports: ",
    "every statement verified",
    "outstanding liability",
    "Cross-brand:",
    "Payments: bank details approved under four eyes; payment run pay_",
    "pain.001.001.09",
    "every statement settled by its payment",
    "Operations (through Operations, batched",
    "API keys",
    "operator key id: key_",
    "Invariants (coalition check)",
    "Elapsed:",
    "All invariants hold.",
)


def test_demo_fills_an_empty_database_keeps_every_invariant_and_refuses_a_second_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'demo.sqlite3'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COALITION_DATABASE_URL", url)
    monkeypatch.setenv("COALITION_SECRET_KEY", base64.urlsafe_b64encode(b"s" * 32).decode())

    assert main(["demo", "--members", "40"]) == 0
    out = capsys.readouterr().out
    for section in SECTIONS:
        assert section in out, section
    assert "valid 30 days in this demo" in out
    assert " of the earns in " in out and " bulk earns" in out  # the bulk path took them

    engine = make_engine(url)
    try:
        with transaction(session_factory(engine)) as s:
            findings = run_checks(s)
            assert all(f.ok for f in findings), [f.violations for f in findings]
            currencies = set(s.scalars(select(Partner.currency)))
            assert len(currencies) >= 3 and "JPY" in currencies
            partners = s.scalar(select(func.count()).select_from(Partner))
            assert partners is not None and partners >= 3
            cards = s.scalar(select(func.count()).select_from(RateCard))
            assert cards is not None and cards > partners  # a rate card changed mid-period
            kinds = set(s.scalars(select(Transaction.kind).distinct()))
            assert kinds == {
                "earn", "burn", "earn_reversal", "burn_reversal", "bonus", "adjustment", "expiry"
            }  # fmt: skip
            statuses = set(s.scalars(select(Hold.status).distinct()))
            assert {"captured", "voided", "expired"} <= statuses
            clawed_back = s.scalar(select(func.max(Transaction.overdraft_points)))
            assert clawed_back is not None and clawed_back > 0  # points spent, then taken back
            cross_brand = s.scalar(
                select(func.count())
                .select_from(LotMovement)
                .join(Transaction, Transaction.id == LotMovement.transaction_id)
                .join(Lot, Lot.id == LotMovement.lot_id)
                .where(
                    Transaction.kind == "burn",
                    Lot.origin_partner_id.is_not(None),
                    Lot.origin_partner_id != Transaction.partner_id,
                )
            )
            assert cross_brand
            assert s.scalar(select(func.count()).where(ApiKey.role == "operator")) == 1
            assert s.scalar(select(func.count()).where(ApiKey.role == "partner")) == partners
    finally:
        engine.dispose()

    exports = sorted((tmp_path / "statements").glob("*.csv"))
    assert len(exports) == partners
    keys = tmp_path / "statements" / "signing-keys.json"
    assert main(["statements", "verify", str(exports[0]), "--keys", str(keys)]) == 0
    assert main(["statements", "verify", str(exports[0].with_suffix(".json"))]) == 0

    assert main(["demo", "--members", "40"]) == 1
    out = capsys.readouterr().out
    assert "needs an empty database" in out
