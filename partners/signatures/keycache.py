"""The API keys one process has seen, so that a signed request needs no database round trip
(and no AES-GCM unseal) to verify its signature; and the key's ``last_used_at``.

Revocation is the one change a key can undergo. A cached key is revalidated (its
``revoked_at`` read again) at most a second after it was last read, in the request's own
transaction, and a revocation made through this process forgets the key at once: a revoked
key is refused by every API process within a second. Why not LISTEN/NOTIFY: it needs a
connection per process kept listening, and when that connection drops the cache would be
stale without knowing it; a bounded age needs nothing to stay up, costs one indexed read per
key and second, and the bound holds whatever fails.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, or_, select, update
from sqlalchemy.orm import Session

from coalition.errors import invariant
from partners.keys import unseal
from partners.models import ApiKey
from partners.signatures.refusals import fail

#: ``last_used_at`` is written at most this often per key.
LAST_USED_INTERVAL = timedelta(seconds=60)
#: Keys one process keeps in its :class:`KeyCache` (beyond, it starts over).
MAX_KEYS = 10_000


@dataclass(frozen=True, slots=True)
class CachedKey:
    """What verifying a signature needs of a key, with the HMAC secret already unsealed.

    A key's material, role, partner, scopes and expiry never change after it is created; only
    ``revoked_at`` does, which is why :class:`KeyCache` revalidates it.
    """

    id: str
    role: str
    partner_id: str | None
    alg: str
    scopes: frozenset[str]
    expires_at: datetime | None
    revoked_at: datetime | None
    material: bytes  # the unsealed HMAC secret, or the raw Ed25519 public key


_KEYS = cast("Table", ApiKey.__table__)
_KEY_COLUMNS = select(
    ApiKey.id,
    ApiKey.role,
    ApiKey.partner_id,
    ApiKey.alg,
    ApiKey.scopes,
    ApiKey.secret_sealed,
    ApiKey.public_key,
    ApiKey.expires_at,
    ApiKey.revoked_at,
)
_KEY_REVOKED_AT = select(_KEYS.c.revoked_at).where(_KEYS.c.id == bindparam("key"))
_TOUCH_KEY = (
    update(_KEYS)
    .where(
        _KEYS.c.id == bindparam("key"),
        or_(_KEYS.c.last_used_at.is_(None), _KEYS.c.last_used_at < bindparam("due_before")),
    )
    .values(last_used_at=bindparam("now"))
)


class KeyCache:
    """The keys of one process, each revalidated at most ``revalidate_s`` seconds after it was
    last read (:meth:`revalidate`), forgotten at once when revoked here (:meth:`forget`);
    bounded to :data:`MAX_KEYS` entries. Safe to share between threads."""

    def __init__(
        self,
        secret_key: bytes,
        *,
        revalidate_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._secret_key = secret_key
        self._revalidate_s = revalidate_s
        self._monotonic = monotonic
        self._keys: dict[str, CachedKey] = {}
        self._read_at: dict[str, float] = {}
        self._touched_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def cached(self, key_ids: Iterable[str]) -> dict[str, CachedKey]:
        """The cached keys among ``key_ids`` (no database)."""
        keys = self._keys
        return {k: keys[k] for k in key_ids if k in keys}

    def load(self, session: Session, key_ids: Iterable[str]) -> dict[str, CachedKey]:
        """Read ``key_ids`` from the database into the cache; the ones that exist.

        A sealed HMAC secret that does not open under the service's key raises ValueError
        (a server misconfiguration, not the client's fault).
        """
        ids = sorted(set(key_ids))
        rows = session.execute(_KEY_COLUMNS.where(ApiKey.id.in_(ids))).all() if ids else []
        now = self._monotonic()
        found = {row.id: self._cached_key(row) for row in rows}
        with self._lock:
            if len(self._keys) + len(found) > MAX_KEYS:
                self._keys.clear()
                self._read_at.clear()
            self._keys.update(found)
            self._read_at.update(dict.fromkeys(found, now))
        return found

    def _cached_key(self, row: Any) -> CachedKey:
        if row.alg == "hmac-sha256":
            invariant(row.secret_sealed is not None, f"HMAC key {row.id} has no sealed secret")
            material = unseal(self._secret_key, row.id, row.secret_sealed)
        else:
            invariant(row.public_key is not None, f"key {row.id} has no public key")
            material = row.public_key
        return CachedKey(
            id=row.id,
            role=row.role,
            partner_id=row.partner_id,
            alg=row.alg,
            scopes=frozenset(row.scopes.split()) if row.role == "partner" else frozenset(),
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            material=material,
        )

    def forget(self, key_id: str) -> None:
        """Drop a key (it was revoked through this process): the next request reads it again."""
        with self._lock:
            self._keys.pop(key_id, None)
            self._read_at.pop(key_id, None)

    def quiet(self, key_id: str) -> bool:
        """Neither :meth:`revalidate` nor :meth:`touch` would go to the database for the key
        now: using it writes and reads nothing but what the request itself does."""
        now = self._monotonic()
        return not (self._revalidation_due(key_id, now) or self._touch_due(key_id, now))

    def _revalidation_due(self, key_id: str, now: float) -> bool:
        return now - self._read_at.get(key_id, float("-inf")) >= self._revalidate_s

    def _touch_due(self, key_id: str, now: float) -> bool:
        elapsed = now - self._touched_at.get(key_id, float("-inf"))
        return elapsed >= LAST_USED_INTERVAL.total_seconds()

    def revalidate(self, session: Session, key_id: str) -> None:
        """Read the key's ``revoked_at`` again if its cached copy is older than the bound;
        ``SignatureInvalid`` (``revoked-key``) if it was revoked meanwhile."""
        now = self._monotonic()
        if not self._revalidation_due(key_id, now):
            return
        revoked_at = session.scalar(_KEY_REVOKED_AT, {"key": key_id})
        key = self._keys.get(key_id)
        with self._lock:
            self._read_at[key_id] = now
            if key is not None and revoked_at is not None:
                self._keys[key_id] = replace(key, revoked_at=revoked_at)
        if revoked_at is not None:
            raise fail("revoked-key", f"key {key_id} was revoked")

    def touch(self, session: Session, key_id: str, now: datetime) -> None:
        """``last_used_at = now``, at most once per :data:`LAST_USED_INTERVAL` per key and
        process (the conditional UPDATE settles races between processes)."""
        tick = self._monotonic()
        if not self._touch_due(key_id, tick):
            return
        self._touched_at[key_id] = tick
        session.execute(
            _TOUCH_KEY, {"key": key_id, "now": now, "due_before": now - LAST_USED_INTERVAL}
        )
