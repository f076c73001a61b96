"""API responses are never cached (no-store), HTML pages carry the usual security headers, and
the interactive API docs come with their assets from the service itself, nothing from a CDN."""

from __future__ import annotations

import re

import requests

from tests.api.conftest import Live, ok, problem


def test_api_responses_are_no_store_above_all_those_with_a_secret(live: Live) -> None:
    made = live.operator.post("/v1/admin/operator-keys", {"role": "finance"})
    assert ok(made, 201)["secret"]
    unsigned = requests.get(live.base_url + "/v1/me", timeout=10)
    problem(unsigned, 401, "signature-invalid")
    for response in (made, unsigned, requests.get(live.base_url + "/v1/health", timeout=10)):
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_html_pages_carry_security_headers(live: Live) -> None:
    for path in ("/schema/swagger", "/problems/validation"):
        response = requests.get(live.base_url + path, timeout=10)
        assert response.status_code == 200 and response.headers["Content-Type"].startswith(
            "text/html"
        )
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_the_api_docs_load_everything_from_the_service(live: Live) -> None:
    page = requests.get(live.base_url + "/schema/swagger", timeout=10).text
    assert "<script>" not in page, "no inline script (the policy forbids them)"
    assert not re.search(r"https?://", page), "no absolute URL: no CDN"
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(assets) == 3
    for asset in assets:
        assert asset.startswith("/schema/assets/")
        response = requests.get(live.base_url + asset, timeout=10)
        assert response.status_code == 200 and len(response.content) > 100, asset
    init = requests.get(live.base_url + "/schema/assets/swagger-init.js", timeout=10).text
    assert '"/schema/openapi.json"' in init
    ok(requests.get(live.base_url + "/schema/openapi.json", timeout=10))
