"""The rows every signed request writes lose their foreign key to the API key: a request's
nonce (``request_nonces``) and a used-up POST signature (``signature_uses``).

Every signed request of a key inserts one of them, and the key's check took a ``FOR KEY
SHARE`` lock on that key's one ``api_keys`` row per insert: WAL per request (54 bytes measured
per signed earn, docs/benchmarks.md) and, with many connections signing with one key (a
partner's back end), a MultiXact on that row for every concurrent insert. Keys are never
deleted (a key is revoked, its row kept), and these rows are looked up by the key that signed
the request the service just verified and are purged minutes later, so the key guarded
nothing a request could break (docs/invariants.md, "Foreign keys").

Revision ID: 0017_request_rows_unkeyed
Revises: 0016_tier_basis
"""

from __future__ import annotations

from coalition.migrations import foreign_keys

revision = "0017_request_rows_unkeyed"
down_revision = "0016_tier_basis"
branch_labels = None
depends_on = None

_KEYS: tuple[foreign_keys.Key, ...] = (
    ("request_nonces", "fk_request_nonces_key_id_api_keys", "key_id", "api_keys"),
    ("signature_uses", "fk_signature_uses_key_id_api_keys", "key_id", "api_keys"),
)


def upgrade() -> None:
    foreign_keys.drop(_KEYS)


def downgrade() -> None:
    foreign_keys.add(_KEYS)
