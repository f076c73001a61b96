"""``HEAD /v1/health`` and ``HEAD /v1/health/live`` answer as ``GET`` does, without the body
(load balancers and uptime checks probe with ``HEAD``)."""

from __future__ import annotations

import pytest
import requests

from tests.api.conftest import Live


@pytest.mark.parametrize("path", ["/v1/health", "/v1/health/live"])
def test_head_of_a_health_path_answers_like_get_without_a_body(api: Live, path: str) -> None:
    got = requests.get(api.base_url + path, timeout=10)
    head = requests.head(api.base_url + path, timeout=10)
    assert (got.status_code, head.status_code) == (200, 200)
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-length"] == got.headers["content-length"]
    assert head.headers["x-request-id"].startswith("req_")
