"""Configuration from the environment and an optional TOML file.

Environment variables win over the file. The file is ``coalition.toml`` in the working directory,
or the path in ``COALITION_CONFIG_FILE``; its keys are the variable names without the
``COALITION_`` prefix, in lower case (``database_url = "..."``).
"""

from __future__ import annotations

import base64
import itertools
import logging
import os
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

DEV_SECRET_KEY_FILE = ".coalition-secret-key"  # noqa: S105 (a file name, not a secret)
CYCLES = ("daily", "weekly", "monthly")
DEFAULT_DATABASE_URL = "sqlite:///coalition.sqlite3"
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"


_HOST = re.compile(r"(?:[a-z0-9.-]{1,253}|\[[0-9a-f:.]{2,45}\])(?::[0-9]{1,5})?")


class ConfigError(ValueError):
    """A configuration value is missing or malformed."""


@dataclass(frozen=True, slots=True)
class Tier:
    """A member tier: reached at ``threshold_points`` over the trailing window."""

    name: str
    threshold_points: int
    multiplier: Decimal


DEFAULT_TIERS = (
    Tier("base", 0, Decimal("1")),
    Tier("silver", 5_000, Decimal("1.3")),
    Tier("gold", 20_000, Decimal("1.6")),
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service reads from its environment."""

    database_url: str = DEFAULT_DATABASE_URL
    #: A streaming replica for the reads that may be a moment old (coalition.replicas.Reads), and
    #: the lag past which those reads go to the primary instead.
    replica_database_url: str | None = None
    replica_max_lag_s: float = 5.0
    #: True when a pooler in transaction mode (pgbouncer, ``pool_mode = transaction``) stands
    #: between the service and PostgreSQL: the driver then prepares no statement on the server,
    #: since the next transaction may run on another server connection (docs/operations.md).
    database_pgbouncer: bool = False
    secret_key: bytes = b""
    secret_key_is_dev_default: bool = False
    public_url: str = DEFAULT_PUBLIC_URL
    #: True when COALITION_PUBLIC_URL was not set: signatures are then checked against the
    #: address the request reached only, never against the default URL.
    public_url_is_default: bool = False
    #: Further ``host`` or ``host:port`` names requests may be addressed to (signatures name
    #: the host, so a request signed for another service is refused).
    allowed_hosts: tuple[str, ...] = ()
    #: Requests per window per API key, and failed requests per window per source address
    #: (0: no limit); shared by all API processes (partners/ratelimit.py).
    rate_limit_per_key: int = 6000
    rate_limit_failures_per_address: int = 300
    rate_limit_window_s: int = 60
    #: How often a process merges its per-key counts into the shared counters (0: at every
    #: request, exact but a statement each; partners/ratelimit.py).
    rate_limit_flush_ms: int = 200
    settlement_cycle: str = "monthly"
    timezone: str = "UTC"
    webhook_allow_private: bool = False
    points_validity_days: int = 1095
    hold_default_expiry_s: int = 900
    hold_max_expiry_s: int = 7 * 24 * 3600
    tier_window_days: int = 365
    tiers: tuple[Tier, ...] = field(default=DEFAULT_TIERS)
    #: How long ``coalition serve`` lets requests in flight finish after SIGTERM.
    shutdown_timeout_s: int = 20
    #: The operator's own bank account, for payment files (settlement/payments/runs.py checks
    #: them when a run is made: a run without them is ``409 payments-not-configured``).
    operator_name: str | None = None
    operator_iban: str | None = None
    operator_bic: str | None = None
    #: The operator's SEPA creditor identifier, for direct debits.
    sepa_creditor_id: str | None = None

    @property
    def tz(self) -> ZoneInfo:
        """The settlement time zone."""
        return ZoneInfo(self.timezone)


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}: expected a boolean (on/off), got {raw!r}")


def _parse_int(name: str, raw: str, minimum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _parse_seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not 0 < value < float("inf"):
        raise ConfigError(f"{name}: must be a positive number of seconds, got {raw!r}")
    return value


def parse_allowed_hosts(raw: str) -> tuple[str, ...]:
    """``COALITION_ALLOWED_HOSTS``: comma-separated ``host`` (any port) or ``host:port``."""
    hosts = []
    for entry in raw.split(","):
        name = entry.strip().lower()
        if not name:
            continue
        if not _HOST.fullmatch(name):
            raise ConfigError(f"COALITION_ALLOWED_HOSTS: not a host or host:port: {entry!r}")
        hosts.append(name)
    return tuple(hosts)


def parse_tiers(raw: str) -> tuple[Tier, ...]:
    """Parse ``name:threshold:multiplier`` entries separated by commas.

    The first tier must have threshold 0; thresholds must increase.
    """
    tiers: list[Tier] = []
    for entry in raw.split(","):
        parts = entry.strip().split(":")
        if len(parts) != 3:
            raise ConfigError(f"COALITION_TIERS: expected name:threshold:multiplier, got {entry!r}")
        name, threshold, multiplier = parts
        try:
            tier = Tier(name.strip(), int(threshold), Decimal(multiplier))
        except (ValueError, ArithmeticError):
            raise ConfigError(f"COALITION_TIERS: malformed entry {entry!r}") from None
        if not tier.name or not tier.multiplier.is_finite() or tier.multiplier <= 0:
            raise ConfigError(f"COALITION_TIERS: malformed entry {entry!r}")
        tiers.append(tier)
    if not tiers or tiers[0].threshold_points != 0:
        raise ConfigError("COALITION_TIERS: the first tier must have threshold 0")
    if any(a.threshold_points >= b.threshold_points for a, b in itertools.pairwise(tiers)):
        raise ConfigError("COALITION_TIERS: thresholds must increase")
    return tuple(tiers)


def _file_values(environ: dict[str, str]) -> dict[str, str]:
    path = Path(environ.get("COALITION_CONFIG_FILE", "coalition.toml"))
    if not path.is_file():
        if "COALITION_CONFIG_FILE" in environ:
            raise ConfigError(f"COALITION_CONFIG_FILE: no such file {path}")
        return {}
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    return {f"COALITION_{k.upper()}": str(v) for k, v in data.items()}


def _dev_secret_key() -> bytes:
    """Read or create the development secret key file, and say so loudly."""
    path = Path(DEV_SECRET_KEY_FILE)
    if path.is_file():
        key = base64.urlsafe_b64decode(path.read_text().strip() + "==")
    else:
        key = secrets.token_bytes(32)
        path.write_text(base64.urlsafe_b64encode(key).decode().rstrip("=") + "\n")
        path.chmod(0o600)
    # A log record (a JSON line under `coalition`), not a bare print: logs stay parseable.
    logging.getLogger("coalition.config").warning(
        "COALITION_SECRET_KEY is not set; using the development key in %s. Set "
        "COALITION_SECRET_KEY (32 bytes, base64url) in production.",
        path.resolve(),
    )
    return key


def _decode_secret_key(raw: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(raw.strip() + "=" * (-len(raw.strip()) % 4))
    except ValueError:
        raise ConfigError("COALITION_SECRET_KEY: expected base64url") from None
    if len(key) != 32:
        raise ConfigError("COALITION_SECRET_KEY: expected 32 bytes (base64url encoded)")
    return key


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from the environment (and the optional config file)."""
    env = dict(os.environ if environ is None else environ)
    values = {**_file_values(env), **{k: v for k, v in env.items() if k.startswith("COALITION_")}}
    cycle = values.get("COALITION_SETTLEMENT_CYCLE", "monthly")
    if cycle not in CYCLES:
        raise ConfigError(f"COALITION_SETTLEMENT_CYCLE: one of {', '.join(CYCLES)}, got {cycle!r}")
    timezone = values.get("COALITION_TIMEZONE", "UTC")
    try:
        ZoneInfo(timezone)
    except (KeyError, ValueError):
        raise ConfigError(f"COALITION_TIMEZONE: unknown time zone {timezone!r}") from None
    raw_key = values.get("COALITION_SECRET_KEY")
    return Settings(
        database_url=values.get("COALITION_DATABASE_URL", DEFAULT_DATABASE_URL),
        replica_database_url=values.get("COALITION_REPLICA_DATABASE_URL") or None,
        replica_max_lag_s=_parse_seconds(
            "COALITION_REPLICA_MAX_LAG_S", values.get("COALITION_REPLICA_MAX_LAG_S", "5")
        ),
        database_pgbouncer=_parse_bool(
            "COALITION_DATABASE_PGBOUNCER", values.get("COALITION_DATABASE_PGBOUNCER", "off")
        ),
        secret_key=_decode_secret_key(raw_key) if raw_key else _dev_secret_key(),
        secret_key_is_dev_default=not raw_key,
        public_url=values.get("COALITION_PUBLIC_URL", DEFAULT_PUBLIC_URL).rstrip("/"),
        public_url_is_default="COALITION_PUBLIC_URL" not in values,
        allowed_hosts=parse_allowed_hosts(values.get("COALITION_ALLOWED_HOSTS", "")),
        rate_limit_per_key=_parse_int(
            "COALITION_RATE_LIMIT_PER_KEY", values.get("COALITION_RATE_LIMIT_PER_KEY", "6000"), 0
        ),
        rate_limit_failures_per_address=_parse_int(
            "COALITION_RATE_LIMIT_FAILURES_PER_ADDRESS",
            values.get("COALITION_RATE_LIMIT_FAILURES_PER_ADDRESS", "300"),
            0,
        ),
        rate_limit_window_s=_parse_int(
            "COALITION_RATE_LIMIT_WINDOW_S", values.get("COALITION_RATE_LIMIT_WINDOW_S", "60"), 1
        ),
        rate_limit_flush_ms=_parse_int(
            "COALITION_RATE_LIMIT_FLUSH_MS", values.get("COALITION_RATE_LIMIT_FLUSH_MS", "200"), 0
        ),
        settlement_cycle=cycle,
        timezone=timezone,
        webhook_allow_private=_parse_bool(
            "COALITION_WEBHOOK_ALLOW_PRIVATE", values.get("COALITION_WEBHOOK_ALLOW_PRIVATE", "off")
        ),
        points_validity_days=_parse_int(
            "COALITION_POINTS_VALIDITY_DAYS",
            values.get("COALITION_POINTS_VALIDITY_DAYS", "1095"),
            1,
        ),
        tier_window_days=_parse_int(
            "COALITION_TIER_WINDOW_DAYS", values.get("COALITION_TIER_WINDOW_DAYS", "365"), 1
        ),
        shutdown_timeout_s=_parse_int(
            "COALITION_SHUTDOWN_TIMEOUT_S", values.get("COALITION_SHUTDOWN_TIMEOUT_S", "20"), 1
        ),
        operator_name=values.get("COALITION_OPERATOR_NAME") or None,
        operator_iban=values.get("COALITION_OPERATOR_IBAN") or None,
        operator_bic=values.get("COALITION_OPERATOR_BIC") or None,
        sepa_creditor_id=values.get("COALITION_SEPA_CREDITOR_ID") or None,
        tiers=parse_tiers(values["COALITION_TIERS"])
        if "COALITION_TIERS" in values
        else DEFAULT_TIERS,
    )
