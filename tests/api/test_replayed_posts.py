"""A captured signed POST replayed within the window, with fresh Idempotency-Keys, has no
second effect; a retry of the very same request (same Idempotency-Key) still gets its
idempotent replay; signatures that cover a nonce or the Idempotency-Key are left alone."""

from __future__ import annotations

import copy
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import requests
from requests_http_signature import HTTPSignatureAuth, algorithms
from sqlalchemy import func, select, text

from coalition.db import session_factory, transaction, utcnow
from partners.replay import SignatureUse, purge_signature_uses
from tests.api.conftest import Key, Live, Partner, ok, problem


def _members(live: Live) -> int:
    with live.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM members")).scalar_one())


def _captured(
    live: Live, key: Key, auth: HTTPSignatureAuth | None = None
) -> requests.PreparedRequest:
    """A signed ``POST /v1/members {}`` as it went over the wire."""
    request = requests.Request(
        "POST",
        live.base_url + "/v1/members",
        data=b"{}",
        headers={"Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())},
    ).prepare()
    signed = (auth or key.auth(use_nonce=False))(request)
    assert isinstance(signed, requests.PreparedRequest)
    return signed


def _send(
    request: requests.PreparedRequest, idempotency_key: str | None = None
) -> requests.Response:
    again = copy.deepcopy(request)
    if idempotency_key is not None:
        again.headers["Idempotency-Key"] = idempotency_key
    with requests.Session() as session:
        return session.send(again, timeout=30)


def test_a_replayed_post_with_fresh_idempotency_keys_makes_nothing(api: Live) -> None:
    partner: Partner = api.partner()
    captured = _captured(api, partner.key)
    ok(_send(captured), 201)
    before = _members(api)
    for _ in range(3):
        doc = problem(_send(captured, str(uuid.uuid4())), 401, "signature-invalid")
        assert doc["reason"] == "replayed-signature"
    assert _members(api) == before


def test_a_retry_of_the_same_request_gets_its_idempotent_replay(api: Live) -> None:
    partner = api.partner()
    captured = _captured(api, partner.key)
    first = ok(_send(captured), 201)
    retry = _send(captured)
    assert ok(retry, 201) == first and retry.headers["Idempotent-Replayed"] == "true"


def test_signatures_with_a_nonce_or_covering_the_idempotency_key_are_not_used_up(
    api: Live,
) -> None:
    partner = api.partner()
    key = partner.key
    algorithm = algorithms.HMAC_SHA256
    with_nonce = HTTPSignatureAuth(
        signature_algorithm=algorithm, key=key.material, key_id=key.key_id, use_nonce=True
    )
    # two identical POSTs in the same second, told apart by their nonces
    ok(_send(_captured(api, key, with_nonce)), 201)
    ok(_send(_captured(api, key, with_nonce)), 201)
    covering = HTTPSignatureAuth(
        signature_algorithm=algorithm,
        key=key.material,
        key_id=key.key_id,
        covered_component_ids=("@method", "@authority", "@target-uri", "idempotency-key"),
    )
    captured = _captured(api, key, covering)
    ok(_send(captured), 201)
    doc = problem(_send(captured, str(uuid.uuid4())), 401, "signature-invalid")
    assert doc["reason"] == "bad-signature"
    with api.engine.connect() as conn:
        used = conn.execute(
            select(func.count()).select_from(SignatureUse).where(SignatureUse.key_id == key.key_id)
        ).scalar_one()
    assert used == 0


def test_a_signature_without_a_nonce_beside_one_with_is_used_up_too(api: Live) -> None:
    """A POST carrying two signatures of one key, one with a nonce and one without: the one
    without is remembered, so the request replayed with only that signature is refused."""
    partner = api.partner()
    key = partner.key
    algorithm = algorithms.HMAC_SHA256
    with_nonce = HTTPSignatureAuth(
        signature_algorithm=algorithm, key=key.material, key_id=key.key_id, use_nonce=True,
        label="fresh",
    )  # fmt: skip
    without = HTTPSignatureAuth(
        signature_algorithm=algorithm, key=key.material, key_id=key.key_id, label="plain",
        append_if_signature_exists=True, use_existing_digest=True,
    )  # fmt: skip
    both = _captured(api, key, with_nonce)
    signed = without(both)
    assert isinstance(signed, requests.PreparedRequest)
    assert (
        "fresh=" in signed.headers["Signature-Input"]
        and "plain=" in signed.headers["Signature-Input"]
    )
    ok(_send(signed), 201)
    before = _members(api)
    stripped = copy.deepcopy(signed)
    for name in ("Signature-Input", "Signature"):
        stripped.headers[name] = ", ".join(
            member for member in signed.headers[name].split(", ") if member.startswith("plain=")
        )
    doc = problem(_send(stripped, str(uuid.uuid4())), 401, "signature-invalid")
    assert doc["reason"] == "replayed-signature"
    assert _members(api) == before


class _OneSecond(HTTPSignatureAuth):
    """The stock client, signing at one fixed second (as two requests in a second do)."""

    created = datetime.now(UTC).replace(microsecond=0)

    def get_created(self, request: requests.PreparedRequest) -> datetime:
        return self.created


def test_identical_posts_in_one_second_need_a_nonce(api: Live) -> None:
    """The limit of the protection: two POSTs with identical bytes signed in the same second
    without a nonce have one signature; the second is refused until it is signed anew."""
    partner = api.partner()
    key = partner.key
    _OneSecond.created = datetime.now(UTC).replace(microsecond=0)
    auth = _OneSecond(
        signature_algorithm=algorithms.HMAC_SHA256, key=key.material, key_id=key.key_id
    )
    first, second = _captured(api, key, auth), _captured(api, key, auth)
    assert first.headers["Signature"] == second.headers["Signature"]
    ok(_send(first), 201)
    doc = problem(_send(second), 401, "signature-invalid")
    assert doc["reason"] == "replayed-signature" and "nonce" in doc["detail"]


def test_concurrent_replays_make_exactly_one_member(live_pg: Live) -> None:
    partner = live_pg.partner()
    captured = _captured(live_pg, partner.key)
    before = _members(live_pg)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _send(captured, str(uuid.uuid4())), range(8)))
    assert sorted(a.status_code for a in answers) == [201] + [401] * 7
    assert _members(live_pg) == before + 1


def test_used_signatures_are_forgotten_once_they_cannot_verify(api: Live) -> None:
    partner = api.partner()
    ok(_send(_captured(api, partner.key)), 201)
    sessions = session_factory(api.engine)
    with transaction(sessions) as s:
        assert purge_signature_uses(s, utcnow()) == 0
    with transaction(sessions) as s:
        assert purge_signature_uses(s, utcnow() + timedelta(seconds=661)) >= 1


def test_a_replayed_balance_read_is_refused(api: Live) -> None:
    """A balance read writes its nonce in the statement that reads the balance (PostgreSQL):
    the captured read is answered once and its replays refused; a read refused (an unknown
    member) keeps nothing, its nonce included; fresh reads of the member still work."""
    partner = api.partner()
    member = api.member(partner, 40)

    def captured(member_id: str) -> requests.PreparedRequest:
        request = requests.Request("GET", f"{api.base_url}/v1/members/{member_id}/balance")
        signed = partner.key.auth()(request.prepare())
        assert isinstance(signed, requests.PreparedRequest)
        return signed

    known, unknown = captured(member), captured("mem_nobody_here")
    assert ok(_send(known), 200)["available"] == 40
    for _ in range(2):
        doc = problem(_send(known), 401, "signature-invalid")
        assert doc["reason"] == "replayed-nonce"
        problem(_send(unknown), 404, "unknown-member")
    assert ok(_send(captured(member)), 200)["available"] == 40
