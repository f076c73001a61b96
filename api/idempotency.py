"""Idempotent ``POST``: the HTTP side of :mod:`coalition.idempotency`, and the one database
transaction a signed ``POST`` is. Handlers reach it through :func:`api.handlers.operation`.

Flow of one request (the guard already checked the signature, scope and that the header is
there), all in **one** database transaction:

1. what the signature writes (:func:`partners.signatures.record_use`: the key's revalidation,
   ``last_used_at``); a ``401`` here changes nothing;
2. the key's **exclusion** (on PostgreSQL a transaction-scoped advisory lock, taken without
   waiting: ``409 idempotency-key-in-use`` while another request with the key runs), in one
   round trip with what makes the request single-use (the nonce, or the first use of its
   signature: :func:`api.auth.single_use`; ``401`` when it was used) and, for an earn, a burn
   and a hold on PostgreSQL, with the operation's first read (its terms: the claim is a
   :class:`coalition.hot.Lead`, docs/architecture.md decision 28);
3. the **lookup**: same request and done -> replay its response with
   ``Idempotent-Replayed: true``; other request -> ``422 idempotency-key-reused``;
4. the **operation** (decoding the body included) and the **save** of its response: a
   committed effect always has its stored response, and a stored response always its effect.
   A response that is a ledger transaction (``TransactionOut``) is saved as the transaction's
   id and rendered again from its row to replay it: the row never changes and the rendering is
   a function of it alone, so the replay is the first response byte for byte
   (docs/architecture.md, decision 25).
   On PostgreSQL the one webhook event the operation noted rides the save's statement
   (:data:`partners.webhooks.outbox.RIDER`) instead of a statement of its own at commit; for
   an earn and a burn both the save and the event ride the statement that writes the
   transaction (:mod:`coalition.ledger.riders`), when it is written in one.

No savepoint: when the operation refuses (a :class:`~coalition.errors.CoalitionError`), the
whole transaction rolls back, and a second one (steps 1-3 again) stores the problem document
as the key's response. When a unique key refuses a write because a concurrent request made it
first, the request runs again once, and its checks then see that write. An unexpected failure
(a 5xx) rolls everything back: nothing happened, the key may be used again. A crash does the
same, and the database drops the exclusion with the dead connection, so a retry runs at once
instead of waiting out a lease.

The request hash covers the method, the path and the body bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import msgspec
from litestar import Request, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import idempotency_key, request_unit, single_use
from api.problems import PROBLEM_JSON, error_body
from api.runtime import Services
from coalition import idempotency as store
from coalition import ledger
from coalition.db import dialect_of
from coalition.errors import CoalitionError, InvariantViolated, invariant
from coalition.hot import LeadStopped, lead, lead_pending
from partners.queries import TransactionOut, transaction_out
from partners.signatures import Principal
from partners.webhooks import outbox

REPLAYED_HEADER = "Idempotent-Replayed"

#: An operation: runs in the given session, returns the status and the response struct.
Operation = Callable[[Session], tuple[int, msgspec.Struct]]


def owner_of(principal: Principal) -> str:
    """Whose keys these are: the partner for partner keys, else the role."""
    return principal.partner_id if principal.partner_id is not None else principal.role


def request_hash(method: str, path: str, body: bytes) -> bytes:
    """SHA-256 over the method, the path and the body bytes (its 32 bytes)."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def _replayed(services: Services, session: Session, stored: store.StoredResponse) -> Response[Any]:
    """The stored first response, marked replayed; a transaction rendered from its row."""
    if stored.transaction_id is not None:
        txn = services.ops.get_transaction(None, stored.transaction_id, session=session)
        body = msgspec.json.encode(transaction_out(txn))
    elif stored.body is not None:
        body = stored.body
    else:
        raise InvariantViolated("a stored response is a body or a transaction")
    return _response(stored.status, body, replayed=True)


def _response(status: int, body: bytes, *, replayed: bool) -> Response[Any]:
    headers = {REPLAYED_HEADER: "true"} if replayed else {}
    media_type = PROBLEM_JSON if status >= 400 else "application/json"
    return Response(body, status_code=status, media_type=media_type, headers=headers)


class _OperationFailed(Exception):
    """The operation refused (a :class:`CoalitionError`): roll back, then store the problem."""

    def __init__(self, error: CoalitionError) -> None:
        super().__init__(error)
        self.error = error


#: Runs of one request when a unique key refuses a write another request made first.
_RACE_ATTEMPTS = 2


def run_idempotent(
    request: Request[Any, Any, Any],
    services: Services,
    principal: Principal,
    body: bytes,
    operation: Operation,
    *,
    led: bool = False,
    posts: tuple[str, int] | None = None,
) -> Response[Any]:
    """Run ``operation`` at most once per Idempotency-Key; see the module docstring. ``led``:
    the operation's first statement is a read that carries the claim (on PostgreSQL, step 2
    and 3 in its round trip: :func:`coalition.hot.first_led`). ``posts``: the operation posts
    one ledger transaction of this kind and answers with it and this status; on PostgreSQL the
    response's save and the transaction's webhook event ride the statement that writes it
    (:mod:`coalition.ledger.riders`)."""
    key = idempotency_key(request)
    path = request.scope["path"]
    owner = owner_of(principal)
    digest = request_hash(request.method, path, body)
    now = services.clock()
    # What a stored response is kept under and with (the store's save, as a rider or not).
    stored_as: dict[str, Any] = {
        "owner": owner,
        "key": key,
        "request_hash": digest,
        "method": request.method,
        "path": path[:2048],
        "now": now,
    }

    def first_response(session: Session) -> store.StoredResponse | None:
        """The key held by this transaction, and the response stored for it if any; in the
        same round trip, what makes the request single-use (its nonce...)."""
        return store.claim(
            session,
            owner=owner,
            key=key,
            request_hash=digest,
            now=now,
            prelude=single_use(request),
        )

    def opening(session: Session) -> store.StoredResponse | None:
        """Steps 2 and 3 now, or, ``led`` on PostgreSQL, left to the operation's first read."""
        if led and dialect_of(session) == "postgresql":
            lead(
                session,
                store.claim_lead(
                    owner=owner,
                    key=key,
                    request_hash=digest,
                    now=now,
                    prelude=single_use(request),
                ),
            )
            return None
        return first_response(session)

    def riders(session: Session) -> None:
        """The save and the event, to ride the statement of the transaction ``posts``."""
        if posts is None or dialect_of(session) != "postgresql":
            return
        kind, status = posts
        kept = store.kept_rider(**stored_as, status=status)
        ledger.ride(session, kind, (kept, outbox.EVENT_RIDER))

    def keep(session: Session, status: int, content: bytes, transaction_id: str | None) -> None:
        body = None if transaction_id else content
        store.save(
            session, **stored_as, status=status, body=body, transaction_id=transaction_id,
            rider=outbox.RIDER,
        )  # fmt: skip

    for attempt in range(_RACE_ATTEMPTS):
        try:
            with request_unit(request, single_use_later=True) as session:
                if (stored := opening(session)) is not None:
                    return _replayed(services, session, stored)
                riders(session)
                try:
                    status, payload = operation(session)
                except LeadStopped as stopped:
                    if isinstance(stopped.reason, store.Answered):
                        return _replayed(services, session, stopped.reason.stored)
                    raise stopped.reason from None
                except CoalitionError as exc:
                    raise _OperationFailed(exc) from None
                finally:
                    ledger.alight(session)
                invariant(not lead_pending(session), "the operation's first read took the claim")
                content = msgspec.json.encode(payload)
                rendered = payload.id if isinstance(payload, TransactionOut) else None
                carried = store.kept_with(session)
                if carried is None:
                    keep(session, status, content, rendered)
                else:
                    invariant(
                        posts is not None and (rendered, status) == (carried, posts[1]),
                        "the response saved with the transaction is the transaction",
                    )
            return _response(status, content, replayed=False)
        except _OperationFailed as failed:
            refused = failed.error
            break
        except IntegrityError:
            # A unique key (a reference, a member id) refused a write that a concurrent request
            # committed first: this transaction is void; run the request again, and its checks
            # now see that write (``409 duplicate-reference``, an existing member...).
            if attempt + 1 == _RACE_ATTEMPTS:
                raise
    # The operation refused and everything it did was rolled back: keep its problem document
    # as the key's response, in a transaction of its own (unless a duplicate stored one first).
    with request_unit(request, single_use_later=True) as session:
        if (stored := first_response(session)) is not None:
            return _replayed(services, session, stored)
        status, content = error_body(request.scope, refused)
        keep(session, status, content, None)
    return _response(status, content, replayed=False)
