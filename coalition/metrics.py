"""Prometheus metrics (``prometheus-client``), in multiprocess mode across uvicorn workers.

``coalition serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` (a fresh directory of its own unless the
operator gives one) before any worker starts, so every worker writes its samples there and any
worker answering ``GET /metrics`` reports the sum over all of them. Without the variable (the
tests' in-process server, a single process) the default registry is used.

Labels never carry partner or member ids (unbounded, and data): routes are templates
(``/v1/holds/{hold_id}/capture``), outcomes are problem types.

Operations are measured at one place, around :class:`~partners.operations.Operations` (see
:func:`instrument_operations`), not inside each operation.
"""

from __future__ import annotations

import contextvars
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import Engine, bindparam, event, text

from coalition.db import UTCDateTime
from coalition.hot import LeadStopped

if TYPE_CHECKING:
    from coalition.replicas import ReplicaLag
from coalition.ledger.kinds import ISSUED_KINDS, REDEEMED_KINDS

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The exposition's media type without its charset, which a Litestar response adds to every
#: text/* type itself (given twice, a strict client may refuse the header).
MEDIA_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")
_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "coalition_http_requests_total",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "coalition_http_request_duration_seconds",
    "Time from a request's start to the end of its response, by route template and method.",
    ["route", "method"],
    buckets=_LATENCY_BUCKETS_S,
)
IDEMPOTENT_REPLAYS = Counter(
    "coalition_idempotency_replays_total",
    "POST requests answered from a stored response (Idempotent-Replayed: true).",
    ["route"],
)
CLIENT_DISCONNECTS = Counter(
    "coalition_http_client_disconnects_total",
    "Requests whose client went away before sending its whole body.",
)
OPERATIONS = Counter(
    "coalition_operations_total",
    "Ledger operations, by kind and outcome (ok or the problem type); bulk earns per item.",
    ["kind", "outcome"],
)
OPERATION_LATENCY = Histogram(
    "coalition_operation_duration_seconds",
    "Time of one operation call (one bulk earn call for earn_many), by kind.",
    ["kind"],
    buckets=_LATENCY_BUCKETS_S,
)
POINTS_ISSUED = Counter(
    "coalition_points_issued_total", "Points credited by earns and bonuses.", ["kind"]
)
POINTS_REDEEMED = Counter(
    "coalition_points_redeemed_total", "Points debited by burns and captured holds."
)
POINTS_EXPIRED = Counter("coalition_points_expired_total", "Points expired into breakage.")
DB_POOL_CHECKED_OUT = Gauge(
    "coalition_db_pool_checked_out",
    "Database connections in use, summed over live processes.",
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge(
    "coalition_db_pool_size",
    "Configured database pool size (without overflow), summed over live processes.",
    multiprocess_mode="livesum",
)
DB_POOL_CHECKOUTS = Counter("coalition_db_pool_checkouts_total", "Connections taken from the pool.")
DB_REPLICA_LAG = Gauge(
    "coalition_db_replica_lag_seconds",
    "The read replica's replay lag as it sees itself (NaN: unreachable), the most of any process.",
    multiprocess_mode="livemax",
)
DB_REPLICA_LAG_BYTES = Gauge(
    "coalition_db_replica_lag_bytes",
    "WAL the read replica received but has not replayed yet, the most of any process.",
    multiprocess_mode="livemax",
)
DB_REPLICA_IN_USE = Gauge(
    "coalition_db_replica_in_use",
    "1 while reads go to the replica, 0 while they fall back to the primary (the least of any "
    "process).",
    multiprocess_mode="livemin",
)

#: Operation kinds measured (the methods of Operations of the same name).
OPERATION_KINDS = (
    "create_member",
    "earn",
    "earn_many",
    "burn",
    "hold",
    "capture",
    "void",
    "reverse",
    "bonus",
    "adjust",
    "expire_holds",
    "expire_points",
)

_depth: contextvars.ContextVar[int] = contextvars.ContextVar("coalition_op_depth", default=0)


def multiprocess_dir() -> Path | None:
    """The multiprocess directory when this process runs in multiprocess mode."""
    raw = os.environ.get(MULTIPROC_ENV)
    return Path(raw) if raw else None


def exposition() -> bytes:
    """Every metric in the Prometheus text format (all workers' in multiprocess mode)."""
    if multiprocess_dir() is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


#: The methods counted by name; any other a client sends (the HTTP parser accepts dozens, from
#: ``PROPFIND`` to ``PURGE``) is counted as ``OTHER``: a series each is not worth keeping.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@functools.cache
def _request_series(route: str, method: str, status: int) -> tuple[Any, Any]:
    # The labelled children, looked up once (``labels()`` was a third of the cost of counting
    # a request); routes are templates and methods a closed set, so this stays small.
    return HTTP_REQUESTS.labels(route, method, str(status)), HTTP_LATENCY.labels(route, method)


def observe_request(
    route: str, method: str, status: int, duration_s: float, *, replayed: bool
) -> None:
    """Count one answered request."""
    requests, latency = _request_series(route, method if method in _METHODS else "OTHER", status)
    requests.inc()
    latency.observe(duration_s)
    if replayed:
        IDEMPOTENT_REPLAYS.labels(route).inc()


def observe_pool(engine: Engine) -> None:
    """Follow ``engine``'s connection pool: in use, size, checkouts."""
    size = getattr(engine.pool, "size", None)
    if callable(size):
        DB_POOL_SIZE.inc(size())

    @event.listens_for(engine, "checkout")
    def _checkout(*_args: Any) -> None:
        DB_POOL_CHECKED_OUT.inc()
        DB_POOL_CHECKOUTS.inc()

    @event.listens_for(engine, "checkin")
    def _checkin(*_args: Any) -> None:
        DB_POOL_CHECKED_OUT.dec()


def observe_replica(lag: ReplicaLag, in_use: bool) -> None:
    """Record one measurement of the read replica (``coalition.replicas.Replica``'s ``observe``)."""
    DB_REPLICA_LAG.set(lag.lag_s)
    DB_REPLICA_LAG_BYTES.set(lag.lag_bytes)
    DB_REPLICA_IN_USE.set(1 if in_use else 0)


def _outcome(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) else "error"


def _count_points(kind: str, result: Any) -> None:
    txn = getattr(result, "transaction", None)
    if txn is None:
        return
    if txn.kind in ISSUED_KINDS:
        POINTS_ISSUED.labels(txn.kind).inc(txn.points)
    elif txn.kind in REDEEMED_KINDS:
        POINTS_REDEEMED.inc(txn.points)


def _measured(kind: str, call: Callable[..., Any], engine: Engine | None) -> Callable[..., Any]:
    @functools.wraps(call)
    def run(*args: Any, **kwargs: Any) -> Any:
        if _depth.get():  # an operation inside another (earn_many's deficit path): counted once
            return call(*args, **kwargs)
        token = _depth.set(1)
        start = time.perf_counter()
        try:
            if kind == "expire_points" and engine is not None:
                return _expire_points(call, engine, *args, **kwargs)
            result = call(*args, **kwargs)
        except LeadStopped:  # stopped before it began (a replay): not an outcome of it
            raise
        except BaseException as exc:
            OPERATIONS.labels(kind, _outcome(exc)).inc()
            raise
        finally:
            OPERATION_LATENCY.labels(kind).observe(time.perf_counter() - start)
            _depth.reset(token)
        if kind == "earn_many":
            for item in result:
                if isinstance(item, Exception):
                    OPERATIONS.labels(kind, _outcome(item)).inc()
                else:
                    OPERATIONS.labels(kind, "ok").inc()
                    _count_points(kind, item)
        else:
            OPERATIONS.labels(kind, "ok").inc()
            _count_points(kind, result)
        return result

    return run


_EXPIRED_AT = text(
    "SELECT COALESCE(SUM(points), 0) FROM transactions WHERE posted_at = :at AND kind = 'expiry'"
).bindparams(bindparam("at", type_=UTCDateTime()))


def _expire_points(call: Callable[..., Any], engine: Engine, *args: Any, **kwargs: Any) -> Any:
    """The points expiry job with its points counted: every expiry of a run is posted at the
    run's ``now``, so one indexed sum over that instant finds them."""
    ops = getattr(call, "__self__", None)
    now = kwargs.pop("now", None) or (args[0] if args else None) or ops.clock()  # type: ignore[union-attr]
    done = call(now)
    OPERATIONS.labels("expire_points", "ok").inc()
    if done:
        with engine.connect() as conn:
            POINTS_EXPIRED.inc(int(conn.execute(_EXPIRED_AT, {"at": now}).scalar_one()))
    return done


def instrument_operations(ops: Any, engine: Engine | None = None) -> Any:
    """Measure every operation of ``ops`` (an Operations) in place; returns it."""
    for kind in OPERATION_KINDS:
        method = getattr(ops, kind, None)
        if method is not None:
            setattr(ops, kind, _measured(kind, method, engine))
    return ops
