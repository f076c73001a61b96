"""The project's own partner client (api/client.py) against the live server, with an HMAC and
an Ed25519 key: the whole partner flow, replays and problem documents."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from api.client import CoalitionClient, ProblemError
from tests.api.conftest import Key, Live, unique


def _client(live: Live, key: Key) -> CoalitionClient:
    if key.alg == "hmac-sha256":
        return CoalitionClient(live.base_url, key.key_id, secret=key.material)
    private = serialization.load_pem_private_key(key.material, password=None)
    assert isinstance(private, Ed25519PrivateKey)
    return CoalitionClient(live.base_url, key.key_id, secret=private)


@pytest.mark.parametrize("alg", ["hmac-sha256", "ed25519"])
def test_the_partner_flow_through_the_client(live: Live, alg: str) -> None:
    partner = live.partner("EUR", alg=alg)
    with _client(live, partner.key) as client:
        assert client.me().data["partner"]["id"] == partner.id
        member = client.create_member().data["member_id"]
        key = unique("idem")
        earned = client.earn(member, unique(), "50.00", "EUR", idempotency_key=key)
        assert earned.status == 201 and not earned.replayed
        again = client.earn(member, earned.data["reference"], "50.00", "EUR", idempotency_key=key)
        assert again.replayed and again.data == earned.data
        burned = client.burn(member, unique(), points=10).data
        hold = client.hold(member, unique(), 20).data
        captured = client.capture(hold["id"], 5).data
        assert captured["kind"] == "burn" and captured["points"] == 5
        voidable = client.hold(member, unique(), 5).data
        assert client.void(voidable["id"]).data["status"] == "voided"
        client.reverse(burned["id"], unique(), 4)
        assert client.balance(member).data["available"] == 50 - 10 - 5 + 4
        kinds = [t["kind"] for t in client.iter_transactions(member_id=member, limit=2)]
        assert kinds == ["burn_reversal", "burn", "burn", "earn"]
        with pytest.raises(ProblemError) as caught:
            client.burn(member, unique(), points=10_000)
        assert caught.value.status == 409 and caught.value.code == "insufficient-points"
