"""The ``coalition`` command line: ``init`` (schema and the first operator key, shown once),
``check`` on a database without a schema, configuration errors, and every command's handler."""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from cli.main import build_parser, handler, main
from coalition.audit import AuditEvent, list_events
from coalition.db import make_engine, schema_is_current, session_factory
from partners.keys import b64url_decode, unseal
from partners.models import ApiKey

SECRET_KEY = b"c" * 32


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty SQLite database configured for the command line, run from an empty directory."""
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'coalition.sqlite3'}"
    monkeypatch.setenv("COALITION_DATABASE_URL", url)
    monkeypatch.setenv(
        "COALITION_SECRET_KEY", base64.urlsafe_b64encode(SECRET_KEY).decode().rstrip("=")
    )
    for name in ("COALITION_SETTLEMENT_CYCLE", "COALITION_TIERS", "COALITION_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    return url


def operator_keys(url: str) -> list[ApiKey]:
    engine = make_engine(url)
    try:
        with session_factory(engine)() as s:
            return list(s.scalars(select(ApiKey).where(ApiKey.role == "operator")))
    finally:
        engine.dispose()


def test_init_twice_creates_the_schema_and_one_operator_key_shown_once(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["init", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)

    assert first["alg"] == "hmac-sha256"
    assert first["key_id"].startswith("key_")
    assert "=" not in first["secret"]
    secret = b64url_decode(first["secret"])
    assert len(secret) == 32
    assert (second["key_id"], second["secret"]) == (None, None)

    [key] = operator_keys(database)
    assert key.id == first["key_id"]
    # Stored sealed under COALITION_SECRET_KEY, never in the clear.
    assert key.secret_sealed is not None and secret not in key.secret_sealed
    assert unseal(SECRET_KEY, key.id, key.secret_sealed) == secret
    engine = make_engine(database)
    assert schema_is_current(engine)
    engine.dispose()


def test_init_prints_the_key_once_in_plain_text_too(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init"]) == 0
    first = capsys.readouterr().out
    assert main(["init"]) == 0
    second = capsys.readouterr().out

    [key] = operator_keys(database)
    assert f"key_id: {key.id}" in first and "secret: " in first
    assert "schema: empty ->" in first
    assert "an operator key exists already" in second
    assert "secret" not in second and key.id not in second


def test_check_refuses_a_database_without_the_schema(database: str) -> None:
    with pytest.raises(SystemExit, match="coalition init"):
        main(["check"])


def test_check_passes_on_a_new_database(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    main(["init", "--json"])
    capsys.readouterr()
    assert main(["check", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert [i["invariant"] for i in report["invariants"]] == [1, 2, 3, 4, 5, 6, 7]


def test_a_configuration_error_exits_2_and_says_what_is_wrong(
    database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COALITION_SETTLEMENT_CYCLE", "fortnightly")
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert "COALITION_SETTLEMENT_CYCLE" in err and "fortnightly" in err


def test_init_records_the_first_operator_key_in_the_audit_log(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "--json"]) == 0
    key_id = json.loads(capsys.readouterr().out)["key_id"]
    assert main(["init", "--json"]) == 0
    engine = make_engine(database)
    try:
        with session_factory(engine)() as s:
            events, more = list_events(s)
            assert not more
            assert [(e.key_id, e.source_address, e.status, e.outcome) for e in events] == [
                (key_id, "command-line", None, "ok")
            ]
            assert isinstance(events[0], AuditEvent) and "init" in events[0].action
    finally:
        engine.dispose()


def _handlers(parser: argparse.ArgumentParser) -> list[str]:
    """The handler target of every (sub)command under ``parser``."""
    found = [parser.get_default("handler")] if parser.get_default("handler") else []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _handlers(sub)
    return found


def test_every_command_names_a_function_that_exists() -> None:
    targets = _handlers(build_parser())
    assert len(targets) == 11
    for target in targets:
        assert callable(handler(target)), target
