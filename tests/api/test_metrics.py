"""``GET /metrics`` of ``coalition serve --workers 2``: the Prometheus text format (parsed by
prometheus_client's own parser), summed over both workers, counters moving with signed
traffic, no partner or member id in any label."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import Client, Live, ok, unique
from tests.api.serving import Served, serve_process, wait_for

EARNS = 20
#: Rounds of earns at most before both workers must have served some: a worker that is still
#: starting on a loaded machine (importing the app) takes none, so there is room for that.
MAX_ROUNDS = 60


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve_process(tmp_path_factory.mktemp("metrics"), workers=2)


def _scrape(served: Served) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = requests.get(served.base_url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; version=1.0.0; charset=utf-8"
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move_with_signed_traffic_through_two_workers(
    served: Served, tmp_path: Path
) -> None:
    live = Live(served.base_url, "sqlite", None, served.client(served.operator))  # type: ignore[arg-type]
    partner = live.partner()
    member = live.member(partner)
    before = _scrape(served)

    def earn(n: int) -> int:
        client = Client(served.base_url, partner.key)
        response = client.post(
            "/v1/earns",
            {
                "member_id": member,
                "reference": unique(f"m{n}"),
                "amount": "2.00",
                "currency": "EUR",
            },
            headers={"Connection": "close", "X-Request-Id": f"metrics-earn-{n:04d}"},
        )
        return response.status_code

    def pids() -> set[int]:
        return {
            doc["pid"]
            for doc in served.lines()
            if str(doc.get("request_id", "")).startswith("metrics-earn-")
        }

    sent = 0
    with ThreadPoolExecutor(4) as pool:
        # Which worker accepts a connection is the kernel's choice: send rounds of earns until
        # both have served some (a bounded number of rounds).
        for _ in range(MAX_ROUNDS):
            assert set(pool.map(earn, range(sent, sent + EARNS))) == {201}
            sent += EARNS
            wait_for(partial(_logged, served, sent), 15, "the request lines of the earns")
            if len(pids()) == 2:
                break
    assert len(pids()) == 2, "the traffic did not reach both workers"
    replay = {
        "member_id": member,
        "reference": unique("replay"),
        "amount": "1.00",
        "currency": "EUR",
    }
    for _ in range(2):
        ok(partner.client.post("/v1/earns", replay, idempotency_key="metrics-replay-1"), 201)
    after = _scrape(served)

    route = {"route": "/v1/earns", "method": "POST"}
    moved = _value(after, "coalition_http_requests_total", **route, status="201") - _value(
        before, "coalition_http_requests_total", **route, status="201"
    )
    assert moved == sent + 2
    assert (
        _value(after, "coalition_http_request_duration_seconds_count", **route)
        - _value(before, "coalition_http_request_duration_seconds_count", **route)
        == sent + 2
    )
    ops = {"kind": "earn", "outcome": "ok"}
    assert (
        _value(after, "coalition_operations_total", **ops)
        - _value(before, "coalition_operations_total", **ops)
        == sent + 1
    )
    assert (
        _value(after, "coalition_points_issued_total", kind="earn")
        - _value(before, "coalition_points_issued_total", kind="earn")
        == 2 * sent + 1
    )
    assert (
        _value(after, "coalition_idempotency_replays_total", route="/v1/earns")
        - _value(before, "coalition_idempotency_replays_total", route="/v1/earns")
        == 1
    )
    assert _value(after, "coalition_db_pool_size") > 0


def _logged(served: Served, count: int) -> bool:
    """The request lines of the first ``count`` earns are all written."""
    ids = {
        doc.get("request_id")
        for doc in served.lines()
        if str(doc.get("request_id", "")).startswith("metrics-earn-")
    }
    return len(ids) >= count


def test_no_partner_or_member_id_is_a_label(served: Served) -> None:
    live = Live(served.base_url, "sqlite", None, served.client(served.operator))  # type: ignore[arg-type]
    partner = live.partner()
    member = live.member(partner)
    ok(partner.client.get(f"/v1/members/{member}/balance"))
    samples = _scrape(served)
    values = {value for _, labels in samples for _, value in labels}
    assert "/v1/members/{member_id}/balance" in values
    assert not any(v.startswith(("prt_", "mem_", "key_")) for v in values)


def test_an_unusual_method_is_counted_as_other(served: Served) -> None:
    """Methods beyond the usual ones (the HTTP parser knows dozens) share one label value."""
    for method in ("PROPFIND", "PURGE"):
        requests.request(method, served.base_url + "/v1/health", timeout=10)
    methods = {
        dict(labels).get("method")
        for name, labels in _scrape(served)
        if name == "coalition_http_requests_total"
    }
    assert "OTHER" in methods and not methods & {"PROPFIND", "PURGE"}


def test_a_single_worker_serve_reports_its_metrics_too(tmp_path: Path) -> None:
    single = serve_process(tmp_path, workers=1)
    served = next(single)
    try:
        ok(served.client(served.operator).get("/v1/admin/partners"))
        samples = _scrape(served)
        route = {"route": "/v1/admin/partners", "method": "GET", "status": "200"}
        assert _value(samples, "coalition_http_requests_total", **route) == 1
    finally:
        single.close()
