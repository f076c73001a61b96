"""A signed ``POST`` has one effect: a signature already seen on a POST is used up.

The stock client signs neither a nonce nor the ``Idempotency-Key`` header by default, so a
captured POST could be sent again within the 300 s window with a fresh Idempotency-Key and
act a second time. :func:`claim_post_signature` remembers (a SHA-256 of) every signature value
of a verified POST, per key, with the Idempotency-Key it came with, until it can no longer
verify:

- the same signature with the same Idempotency-Key is a retry of the very same request: it
  passes, and the idempotency layer answers it with the first response;
- the same signature with another (or no) Idempotency-Key is a replay: ``401
  signature-invalid``, reason ``replayed-signature``.

A signature that covers a ``nonce`` (refused twice already) or the ``idempotency-key`` header
(a replay with another key does not verify) is not recorded: it cannot be replayed this way.
Two different POSTs with identical bytes in the same second (``POST /v1/members {}`` twice)
have identical signatures: the second is refused as a replay and should be signed with a
nonce (``requests-http-signature``: ``use_nonce=True``) or retried a second later.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Index, String, delete, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from coalition.db import Base, UTCDateTime, dialect_of
from coalition.errors import SignatureInvalid, required
from coalition.hot import HotStatement, Prelude
from coalition.models import ID
from partners.signatures import SignedRequest

#: How long a signature is remembered: a signature verifies while ``created`` is within 300 s
#: of the clock either side, so one seen now verifies until at most 600 s from now; plus a
#: margin for clock differences between API processes.
REMEMBER = timedelta(seconds=2 * 300 + 60)
IDEMPOTENCY_KEY_MAX = 255


class SignatureUse(Base):
    """A signature value seen on a POST by a key, and the Idempotency-Key it came with."""

    __tablename__ = "signature_uses"
    __table_args__ = (Index("ix_signature_uses_expires", "expires_at"),)

    #: No foreign key, as a request's nonce (migration 0017).
    key_id: Mapped[str] = mapped_column(ID, primary_key=True)
    signature_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(IDEMPOTENCY_KEY_MAX))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


def _replayable(inputs: Mapping[str, Any], key_id: str) -> bool:
    """False when every label of the key covers a nonce or the idempotency-key header."""
    for member in inputs.values():
        try:
            components = [item[0] for item in member[0]]
            params = dict(member[1])
        except (TypeError, IndexError, ValueError):
            return True
        if params.get("keyid") != key_id:
            continue
        if "nonce" not in params and "idempotency-key" not in components:
            return True
    return False


def _digests(values: Mapping[str, Any]) -> list[str]:
    found = []
    for member in values.values():
        value = member[0] if isinstance(member, tuple) else None
        if isinstance(value, bytes) and value:
            found.append(hashlib.sha256(value).hexdigest())
    return sorted(set(found))


# PostgreSQL: one statement for every signature value of a request. A row past its time is
# taken over; a live row is left as it is (and PostgreSQL makes a concurrent second claim wait
# for the first one's transaction). The claim of one value on its own, or in front of the
# Idempotency-Key claim (:func:`post_signature_prelude`).
_USE_SQL = (
    "INSERT INTO signature_uses (key_id, signature_sha256, idempotency_key, expires_at)"
    " SELECT :use_key, digest, :use_idempotency_key, :use_expires_at"
    " FROM unnest(CAST(:use_digests AS VARCHAR[])) AS digest"
    " ON CONFLICT (key_id, signature_sha256) DO UPDATE"
    " SET idempotency_key = excluded.idempotency_key, expires_at = excluded.expires_at"
    " WHERE signature_uses.expires_at < :use_now RETURNING 1"
)
_USE = HotStatement(text(_USE_SQL))


def _use_params(
    key_id: str, digests: list[str], idempotency_key: str, now: datetime
) -> dict[str, Any]:
    return {
        "use_key": key_id,
        "use_idempotency_key": idempotency_key,
        "use_expires_at": now + REMEMBER,
        "use_digests": digests,
        "use_now": now,
    }


def _claim_one(
    session: Session, key_id: str, digest: str, idempotency_key: str, now: datetime
) -> str:
    """Remember the signature; the Idempotency-Key of its first use within the window."""
    if dialect_of(session) == "postgresql":
        written = bool(_USE.rows(session, _use_params(key_id, [digest], idempotency_key, now)))
    else:  # SQLite: the same upsert, one value
        stmt = sqlite.insert(SignatureUse).values(
            key_id=key_id,
            signature_sha256=digest,
            idempotency_key=idempotency_key,
            expires_at=now + REMEMBER,
        )
        claim = stmt.on_conflict_do_update(
            index_elements=[SignatureUse.key_id, SignatureUse.signature_sha256],
            set_={
                "idempotency_key": stmt.excluded.idempotency_key,
                "expires_at": stmt.excluded.expires_at,
            },
            where=SignatureUse.expires_at < now,
        ).returning(SignatureUse.key_id)
        written = session.execute(claim).first() is not None
    if written:
        return idempotency_key
    first = session.scalar(
        select(SignatureUse.idempotency_key).where(
            SignatureUse.key_id == key_id, SignatureUse.signature_sha256 == digest
        )
    )
    return idempotency_key if first is None else first


def post_signature_prelude(
    *, key_id: str, signed: SignedRequest, idempotency_key: str | None, now: datetime
) -> Prelude | None:
    """:func:`claim_post_signature` as the write the Idempotency-Key claim makes in its own
    round trip (``None``: nothing to remember). When one of the signatures was seen before,
    the claim's write took over none of it and :func:`claim_post_signature` decides."""
    if not _replayable(signed.inputs, key_id):
        return None
    digests = _digests(signed.values)

    def settle(session: Session | None, written: int) -> None:
        if written < len(digests):
            alone(required(session, "a POST's signature is settled in its transaction"))

    def alone(session: Session) -> None:
        claim_post_signature(
            session, key_id=key_id, signed=signed, idempotency_key=idempotency_key, now=now
        )

    params = _use_params(key_id, digests, (idempotency_key or "")[:IDEMPOTENCY_KEY_MAX], now)
    return Prelude(_USE_SQL, params, settle, alone)


def claim_post_signature(
    session: Session,
    *,
    key_id: str,
    signed: SignedRequest,
    idempotency_key: str | None,
    now: datetime,
) -> None:
    """Use up the signatures of a verified POST by ``key_id`` (its signature fields as
    :func:`~partners.signatures.parse_signed` read them); ``replayed-signature`` if one was
    already used with another Idempotency-Key. Runs in the verification's transaction."""
    if not _replayable(signed.inputs, key_id):
        return
    idempotency_key = (idempotency_key or "")[:IDEMPOTENCY_KEY_MAX]
    for digest in _digests(signed.values):
        if _claim_one(session, key_id, digest, idempotency_key, now) != idempotency_key:
            raise SignatureInvalid(
                "this signature was already used by a POST with another Idempotency-Key (a "
                "replay); sign each request anew, with a nonce when two may be identical",
                reason="replayed-signature",
            )


def purge_signature_uses(session: Session, now: datetime) -> int:
    """Forget signatures that can no longer verify; how many (a scheduled job)."""
    result = session.execute(
        delete(SignatureUse)
        .where(SignatureUse.expires_at < now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0))
