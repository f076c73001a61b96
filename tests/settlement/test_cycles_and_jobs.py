"""Cut-offs in the configured time zone, the scheduled close, and the signing keys' commands."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from cli.main import main
from coalition.db import make_engine, session_factory, transaction
from settlement.close import close_due
from settlement.cycles import latest_cutoff, next_cutoff, previous_cutoff
from settlement.models import Period, SigningKey
from tests.conftest import Db

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("cycle", "at", "latest", "following"),
    [
        ("daily", "2026-03-29T12:00:00+00:00", "2026-03-28T23:00:00+00:00",
         "2026-03-29T22:00:00+00:00"),  # the night clocks go forward: 23 hours
        ("weekly", "2026-01-07T10:00:00+00:00", "2026-01-04T23:00:00+00:00",
         "2026-01-11T23:00:00+00:00"),  # Monday 00:00 Berlin
        ("monthly", "2026-10-15T10:00:00+00:00", "2026-09-30T22:00:00+00:00",
         "2026-10-31T23:00:00+00:00"),  # 1 October CEST, then 1 November CET
    ],
)  # fmt: skip
def test_cut_offs_are_local_midnights_of_the_cycle(
    cycle: str, at: str, latest: str, following: str
) -> None:
    moment = datetime.fromisoformat(at)
    found = latest_cutoff(moment, cycle, BERLIN)
    assert found == datetime.fromisoformat(latest)
    assert next_cutoff(moment, cycle, BERLIN) == datetime.fromisoformat(following)
    assert previous_cutoff(found, cycle, BERLIN) < found
    assert latest_cutoff(found, cycle, BERLIN) == found


def test_the_scheduled_close_closes_each_cut_off_once(lite: Db) -> None:
    lite.configure(settlement_cycle="daily")
    partner = lite.partner("EUR")
    lite.member(points=100, partner=partner)
    lite.clock.advance(days=1)
    assert close_due(lite.sessions, lite.settings, lite.clock()) == 1
    assert close_due(lite.sessions, lite.settings, lite.clock() + timedelta(hours=1)) == 0
    with transaction(lite.sessions) as s:
        (period,) = s.scalars(select(Period)).all()
    assert period.end_at == datetime(2026, 1, 6, tzinfo=UTC) and period.cycle == "daily"
    assert close_due(lite.sessions, lite.settings, lite.clock() + timedelta(days=1)) == 1


def test_init_creates_a_signing_key_and_rotate_adds_one_that_signs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'keys.sqlite3'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COALITION_DATABASE_URL", url)
    monkeypatch.setenv("COALITION_SECRET_KEY", base64.urlsafe_b64encode(b"s" * 32).decode())
    assert main(["init"]) == 0
    assert main(["init"]) == 0
    assert main(["signing-keys", "rotate"]) == 0
    assert "now signs" in capsys.readouterr().out
    engine = make_engine(url)
    try:
        with transaction(session_factory(engine)) as s:
            keys = s.scalars(select(SigningKey).order_by(SigningKey.generation)).all()
            assert [k.generation for k in keys] == [1, 2]
            assert all(len(k.public_key) == 32 and k.private_sealed for k in keys)
            assert all(k.public_key not in k.private_sealed for k in keys)
    finally:
        engine.dispose()
