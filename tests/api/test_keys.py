"""API keys: secrets are shown once and stored only sealed; creation rules; listing; revocation."""

from __future__ import annotations

import base64
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import InvalidRequestError

from coalition.db import transaction
from coalition.errors import NotFound, ValidationFailed
from partners.keys import (
    NewKey,
    b64url,
    b64url_decode,
    create_key,
    get_key,
    list_keys,
    revoke_key,
    seal,
    unseal,
)
from partners.models import ApiKey
from tests.conftest import Db

SECRET_KEY = b"k" * 32


def new_key(db: Db, partner_id: str | None, **changes: Any) -> NewKey:
    args: dict[str, Any] = {
        "secret_key": SECRET_KEY,
        "role": "partner",
        "partner_id": partner_id,
        "alg": "hmac-sha256",
        "scopes": ["earn", "read"],
        "public_key": None,
        "expires_at": None,
        "now": db.clock(),
    }
    args.update(changes)
    with transaction(db.sessions) as s:
        return create_key(s, **args)


def ed25519_public() -> str:
    raw = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return b64url(raw)


def dump_database(db: Db) -> list[bytes]:
    """Every value of every row of every table, as bytes (text UTF-8 encoded)."""
    values: list[bytes] = []
    tables = inspect(db.engine).get_table_names()
    assert "api_keys" in tables
    with db.engine.connect() as conn:
        for table in tables:
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                for value in row:
                    if isinstance(value, bytes | bytearray | memoryview):
                        values.append(bytes(value))
                    elif value is not None:
                        values.append(str(value).encode())
    return values


def test_hmac_secret_shown_once_as_base64url(db: Db) -> None:
    partner = db.partner()
    new = new_key(db, partner.id)
    assert new.secret is not None
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", new.secret)  # 32 bytes, no padding
    assert len(b64url_decode(new.secret)) == 32
    assert new.key.id.startswith("key_")
    with transaction(db.sessions) as s:
        row = s.get(ApiKey, new.key.id)
        assert row is not None and row.secret_sealed is not None and row.public_key is None
        assert unseal(SECRET_KEY, row.id, row.secret_sealed) == b64url_decode(new.secret)


def test_plaintext_secret_is_nowhere_in_the_database(db: Db) -> None:
    partner = db.partner()
    secrets_ = [
        new_key(db, partner.id).secret,
        new_key(db, None, role="operator", scopes=[]).secret,
        new_key(db, None, role="finance", scopes=[]).secret,
    ]
    forms: list[bytes] = []
    for secret in secrets_:
        assert secret is not None
        raw = b64url_decode(secret)
        forms += [
            secret.encode(),
            raw,
            base64.b64encode(raw),
            base64.b64encode(raw).rstrip(b"="),
            raw.hex().encode(),
            raw.hex().upper().encode(),
            raw[:16],  # any long enough piece
            raw[16:],
        ]
    values = dump_database(db)
    with transaction(db.sessions) as s:
        sealed = [k.secret_sealed for k in s.scalars(select(ApiKey))]
    assert len(sealed) == 3 and all(v in values for v in sealed)  # the dump sees binary columns
    for value in values:
        for form in forms:
            assert form not in value
    if db.backend == "sqlite":  # and not in the files on disk (database and write-ahead log)
        path = Path(str(db.engine.url.database))
        db.engine.dispose()
        for file in (path, Path(f"{path}-wal")):
            if file.exists():
                content = file.read_bytes()
                assert not any(form in content for form in forms)


def test_unseal_with_another_secret_key_fails(db: Db) -> None:
    partner = db.partner()
    new = new_key(db, partner.id)
    other = new_key(db, partner.id)
    with transaction(db.sessions) as s:
        row = s.get(ApiKey, new.key.id)
        assert row is not None and row.secret_sealed is not None
        sealed = row.secret_sealed
    with pytest.raises(ValueError, match="COALITION_SECRET_KEY"):
        unseal(b"w" * 32, new.key.id, sealed)
    # bound to its key id: a sealed secret copied to another key's row does not open
    with pytest.raises(ValueError, match="COALITION_SECRET_KEY"):
        unseal(SECRET_KEY, other.key.id, sealed)
    altered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(ValueError, match="COALITION_SECRET_KEY"):
        unseal(SECRET_KEY, new.key.id, altered)


def test_seal_is_randomised() -> None:
    assert seal(SECRET_KEY, "key_1", b"s" * 32) != seal(SECRET_KEY, "key_1", b"s" * 32)


def test_ed25519_key_stores_only_the_public_key(db: Db) -> None:
    partner = db.partner()
    public = ed25519_public()
    new = new_key(db, partner.id, alg="ed25519", public_key=public)
    assert new.secret is None
    with transaction(db.sessions) as s:
        row = s.get(ApiKey, new.key.id)
        assert row is not None
        assert row.public_key == b64url_decode(public) and row.secret_sealed is None


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"alg": "rsa-pss-sha512"}, "alg"),
        ({"role": "admin"}, "role"),
        ({"scopes": []}, "scopes"),
        ({"scopes": ["earn", "earn"]}, "scopes"),
        ({"scopes": ["admin"]}, "scopes"),
        ({"public_key": "AAAA"}, "public_key"),  # hmac keys have no public key
        ({"alg": "ed25519", "public_key": None}, "public_key"),
        ({"alg": "ed25519", "public_key": b64url(b"x" * 31)}, "public_key"),
        ({"alg": "ed25519", "public_key": base64.b64encode(b"\xff" * 32).decode()}, "public_key"),
        ({"expires_at": "past"}, "expires_at"),
    ],
)
def test_create_key_rules(db: Db, changes: dict[str, Any], path: str) -> None:
    partner = db.partner()
    if changes.get("expires_at") == "past":
        changes["expires_at"] = db.clock() - timedelta(seconds=1)
    with pytest.raises(ValidationFailed) as info:
        new_key(db, partner.id, **changes)
    assert info.value.errors[0]["path"] == path


def test_operator_and_finance_keys_have_no_scopes_and_no_partner(db: Db) -> None:
    partner = db.partner()
    for role in ("operator", "finance"):
        with pytest.raises(ValidationFailed) as info:
            new_key(db, None, role=role, scopes=["read"])
        assert info.value.errors[0]["path"] == "scopes"
        with pytest.raises(ValidationFailed) as info:
            new_key(db, partner.id, role=role, scopes=[])
        assert info.value.errors[0]["path"] == "partner_id"
        new = new_key(db, None, role=role, scopes=[])
        assert new.key.scopes == "" and new.key.partner_id is None


def test_partner_key_needs_a_partner(db: Db) -> None:
    with pytest.raises(NotFound):
        new_key(db, "prt_NOPE")
    with pytest.raises(NotFound):
        new_key(db, None)


def test_get_and_list_keys(db: Db) -> None:
    partner, other = db.partner(), db.partner(name="Other")
    first = new_key(db, partner.id)
    db.clock.advance(seconds=1)
    second = new_key(db, partner.id, alg="ed25519", public_key=ed25519_public(), scopes=["read"])
    new_key(db, other.id)
    new_key(db, None, role="operator", scopes=[])
    empty = db.partner(name="Empty")
    with transaction(db.sessions) as s:
        keys = list_keys(s, partner.id)
        assert [k.id for k in keys] == [first.key.id, second.key.id]
        assert keys[1].scopes == "read" and keys[1].alg == "ed25519"
        with pytest.raises(InvalidRequestError):  # the sealed secret is not even loaded
            _ = keys[0].secret_sealed
    with transaction(db.sessions) as s:
        key = get_key(s, first.key.id)
        assert key.partner_id == partner.id
        with pytest.raises(InvalidRequestError):
            _ = key.secret_sealed
        with pytest.raises(NotFound):
            get_key(s, "key_NOPE")
        with pytest.raises(NotFound):
            list_keys(s, "prt_NOPE")
        assert list_keys(s, empty.id) == []


def test_revoke_key(db: Db) -> None:
    partner = db.partner()
    new = new_key(db, partner.id)
    first = db.clock.advance(minutes=5)
    with transaction(db.sessions) as s:
        key = revoke_key(s, new.key.id, first)
        assert key.revoked_at == first
    with transaction(db.sessions) as s:
        again = revoke_key(s, new.key.id, db.clock.advance(minutes=5))
        assert again.revoked_at == first  # the first revocation stays
    with transaction(db.sessions) as s:
        row = s.scalars(select(ApiKey).where(ApiKey.id == new.key.id)).one()
        assert row.revoked_at == first
        with pytest.raises(NotFound):
            revoke_key(s, "key_NOPE", first)
