"""The probe's reproduction of the Ed25519 forgery: registering the all-zero public key (43 x
``A``) is refused at ``$.public_key``, for partner and operator keys alike."""

from __future__ import annotations

from tests.api.conftest import Live, problem


def test_the_all_zero_ed25519_key_is_refused_over_http(api: Live) -> None:
    partner = api.partner()
    body = {"alg": "ed25519", "scopes": ["read"], "public_key": "A" * 43}
    doc = problem(
        api.operator.post(f"/v1/admin/partners/{partner.id}/keys", body), 422, "validation"
    )
    assert doc["errors"][0]["path"] == "$.public_key"
    body = {"role": "finance", "alg": "ed25519", "public_key": "A" * 43}
    doc = problem(api.operator.post("/v1/admin/operator-keys", body), 422, "validation")
    assert doc["errors"][0]["path"] == "$.public_key"
