"""Configuration from the environment and an optional TOML file (docs/operations.md)."""

from __future__ import annotations

import base64
import logging
from decimal import Decimal
from pathlib import Path

import pytest

from coalition.config import (
    DEFAULT_TIERS,
    DEV_SECRET_KEY_FILE,
    ConfigError,
    Tier,
    load_settings,
    parse_tiers,
)

KEY = base64.urlsafe_b64encode(b"k" * 32).decode().rstrip("=")


@pytest.fixture(autouse=True)
def empty_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No coalition.toml and no development key file from elsewhere."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults() -> None:
    settings = load_settings({"COALITION_SECRET_KEY": KEY})
    assert settings.database_url == "sqlite:///coalition.sqlite3"
    assert settings.secret_key == b"k" * 32
    assert not settings.secret_key_is_dev_default
    assert (settings.settlement_cycle, settings.timezone) == ("monthly", "UTC")
    assert (settings.points_validity_days, settings.tier_window_days) == (1095, 365)
    assert settings.tiers == DEFAULT_TIERS
    assert [(t.name, t.threshold_points, t.multiplier) for t in settings.tiers] == [
        ("base", 0, Decimal("1")),
        ("silver", 5000, Decimal("1.3")),
        ("gold", 20000, Decimal("1.6")),
    ]
    assert settings.webhook_allow_private is False
    assert (settings.replica_database_url, settings.replica_max_lag_s) == (None, 5.0)


def test_a_replica_and_its_lag_bound_are_configured() -> None:
    replica = "postgresql+psycopg://reader@replica:5432/coalition"
    settings = load_settings(
        {
            "COALITION_SECRET_KEY": KEY,
            "COALITION_REPLICA_DATABASE_URL": replica,
            "COALITION_REPLICA_MAX_LAG_S": "2.5",
        }
    )
    assert (settings.replica_database_url, settings.replica_max_lag_s) == (replica, 2.5)


def test_coalition_tiers_are_parsed_in_order() -> None:
    settings = load_settings(
        {"COALITION_SECRET_KEY": KEY, "COALITION_TIERS": "basic:0:1, plus:1000:1.25,max:9000:2"}
    )
    assert settings.tiers == (
        Tier("basic", 0, Decimal("1")),
        Tier("plus", 1000, Decimal("1.25")),
        Tier("max", 9000, Decimal("2")),
    )


@pytest.mark.parametrize(
    "raw",
    [
        "silver:5000:1.3",  # the first tier must start at 0
        "base:0:1,silver:5000",  # name:threshold:multiplier
        "base:0:1,silver:five:1.3",
        "base:0:1,silver:5000:0",  # a multiplier is positive
        "base:0:1,silver:5000:-1",
        "base:0:1,silver:5000:NaN",
        "base:0:1,silver:5000:Infinity",
        "base:0:1,silver:5000:1.3,gold:5000:1.6",  # thresholds increase
        "base:0:1,:10:2",
        "",
    ],
)
def test_malformed_tiers_are_a_configuration_error(raw: str) -> None:
    with pytest.raises(ConfigError, match="COALITION_TIERS"):
        parse_tiers(raw)
    with pytest.raises(ConfigError):
        load_settings({"COALITION_SECRET_KEY": KEY, "COALITION_TIERS": raw})


@pytest.mark.parametrize("cycle", ["daily", "weekly", "monthly"])
def test_settlement_cycles(cycle: str) -> None:
    settings = load_settings({"COALITION_SECRET_KEY": KEY, "COALITION_SETTLEMENT_CYCLE": cycle})
    assert settings.settlement_cycle == cycle


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("COALITION_SETTLEMENT_CYCLE", "fortnightly"),
        ("COALITION_SETTLEMENT_CYCLE", "Monthly"),
        ("COALITION_TIMEZONE", "Mars/Olympus_Mons"),
        ("COALITION_WEBHOOK_ALLOW_PRIVATE", "maybe"),
        ("COALITION_POINTS_VALIDITY_DAYS", "0"),
        ("COALITION_POINTS_VALIDITY_DAYS", "three years"),
        ("COALITION_TIER_WINDOW_DAYS", "-1"),
        ("COALITION_SECRET_KEY", "c2hvcnQ"),  # 5 bytes
        ("COALITION_SECRET_KEY", "!!!not base64!!!"),
        ("COALITION_REPLICA_MAX_LAG_S", "0"),
        ("COALITION_REPLICA_MAX_LAG_S", "five"),
        ("COALITION_REPLICA_MAX_LAG_S", "inf"),
        ("COALITION_REPLICA_MAX_LAG_S", "nan"),
    ],
)
def test_a_bad_value_is_a_configuration_error_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({"COALITION_SECRET_KEY": KEY, name: value})


def test_values_from_the_environment_win_over_the_config_file(empty_directory: Path) -> None:
    (empty_directory / "coalition.toml").write_text(
        'settlement_cycle = "weekly"\ntimezone = "Europe/Berlin"\npoints_validity_days = 730\n'
    )
    settings = load_settings({"COALITION_SECRET_KEY": KEY, "COALITION_TIMEZONE": "Asia/Tokyo"})
    assert (settings.settlement_cycle, settings.timezone) == ("weekly", "Asia/Tokyo")
    assert settings.points_validity_days == 730
    assert str(settings.tz) == "Asia/Tokyo"


def test_a_named_config_file_must_exist(empty_directory: Path) -> None:
    with pytest.raises(ConfigError, match="COALITION_CONFIG_FILE"):
        load_settings({"COALITION_CONFIG_FILE": str(empty_directory / "missing.toml")})


def test_without_a_secret_key_a_development_key_is_made_once_and_said_loudly(
    empty_directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="coalition.config"):
        first = load_settings({})
    warning = caplog.text
    second = load_settings({})

    assert first.secret_key_is_dev_default and len(first.secret_key) == 32
    assert second.secret_key == first.secret_key
    assert "COALITION_SECRET_KEY is not set" in warning
    assert (empty_directory / DEV_SECRET_KEY_FILE).stat().st_mode & 0o077 == 0


def test_the_public_url_loses_its_trailing_slash() -> None:
    settings = load_settings(
        {"COALITION_SECRET_KEY": KEY, "COALITION_PUBLIC_URL": "https://points.example/"}
    )
    assert settings.public_url == "https://points.example"


def test_the_public_url_is_marked_default_until_configured() -> None:
    assert load_settings({"COALITION_SECRET_KEY": KEY}).public_url_is_default
    configured = load_settings(
        {"COALITION_SECRET_KEY": KEY, "COALITION_PUBLIC_URL": "http://127.0.0.1:8000"}
    )
    assert not configured.public_url_is_default


def test_allowed_hosts_are_names_with_an_optional_port() -> None:
    settings = load_settings(
        {"COALITION_SECRET_KEY": KEY, "COALITION_ALLOWED_HOSTS": "API.example, 10.0.0.5:8000,"}
    )
    assert settings.allowed_hosts == ("api.example", "10.0.0.5:8000")
    for bad in ("http://api.example", "api example", "api.example/x", "a\x00b"):
        with pytest.raises(ConfigError, match="COALITION_ALLOWED_HOSTS"):
            load_settings({"COALITION_SECRET_KEY": KEY, "COALITION_ALLOWED_HOSTS": bad})


def test_rate_limits_are_configurable_and_zero_turns_them_off() -> None:
    defaults = load_settings({"COALITION_SECRET_KEY": KEY})
    assert defaults.rate_limit_per_key > 0 and defaults.rate_limit_failures_per_address > 0
    settings = load_settings(
        {
            "COALITION_SECRET_KEY": KEY,
            "COALITION_RATE_LIMIT_PER_KEY": "0",
            "COALITION_RATE_LIMIT_FAILURES_PER_ADDRESS": "20",
            "COALITION_RATE_LIMIT_WINDOW_S": "10",
        }
    )
    assert (settings.rate_limit_per_key, settings.rate_limit_failures_per_address) == (0, 20)
    assert settings.rate_limit_window_s == 10
    with pytest.raises(ConfigError, match="COALITION_RATE_LIMIT_PER_KEY"):
        load_settings({"COALITION_SECRET_KEY": KEY, "COALITION_RATE_LIMIT_PER_KEY": "-1"})
