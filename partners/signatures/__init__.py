"""Request authentication: RFC 9421 HTTP Message Signatures made with an API key.

:func:`verify_request` (or, split for the request path, :func:`parse_signed`,
:func:`verify_signature` and :func:`record_use`) decides who sent a request, or raises
:class:`~coalition.errors.SignatureInvalid` with a ``reason`` naming the check that failed.
One module per concern (docs/signing.md, "Where it lives"):

- :mod:`.fields`: the ``Signature-Input``, ``Signature`` and ``Content-Digest`` structured
  fields, parsed once (``http-sf``, with a strict shortcut for the canonical form);
- :mod:`.base`: the RFC 9421 signature base and the check of a signature against it (the
  ``http-message-signatures`` library's, with the common case built here);
- :mod:`.policy`: what this service accepts (coverage, the clock window, key state, digests)
  and the order of the checks;
- :mod:`.nonces`: the nonces remembered per key while their signature could verify;
- :mod:`.keycache`: the keys one process has seen, revalidated within a second;
- :mod:`.refusals`: the reasons a refusal names.
"""

from partners.signatures.fields import SignedRequest, parse_signed
from partners.signatures.keycache import LAST_USED_INTERVAL, CachedKey, KeyCache
from partners.signatures.nonces import NONCE_MARGIN, NONCE_PURGE_BATCH, purge_nonces
from partners.signatures.policy import (
    WINDOW,
    Principal,
    Verified,
    nonce_prelude,
    record_use,
    verify_request,
    verify_signature,
)
from partners.signatures.refusals import REASONS

__all__ = [
    "LAST_USED_INTERVAL",
    "NONCE_MARGIN",
    "NONCE_PURGE_BATCH",
    "REASONS",
    "WINDOW",
    "CachedKey",
    "KeyCache",
    "Principal",
    "SignedRequest",
    "Verified",
    "nonce_prelude",
    "parse_signed",
    "purge_nonces",
    "record_use",
    "verify_request",
    "verify_signature",
]
