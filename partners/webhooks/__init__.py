"""Webhooks, one area (docs/webhooks.md): what a partner hears of, and how it gets there.

- ``events``: the event catalogue (:class:`~partners.webhooks.events.EventType`, declared once:
  the ledger's, rates', settlement's events and ``ping``), what is subscribable, an event's body;
- ``tables``: endpoints, events, deliveries, attempts;
- ``outbox``: events noted in the transaction of what they describe and written at its commit
  (or riding a signed request's stored response), the retention and its purge;
- ``endpoints``: a partner's endpoints (register, update, rotate, ping, recover) and the
  operator's health view; ``urls``: the outbound-safety check of a URL;
- ``signing``: the endpoints' secrets and the Standard Webhooks signature;
- ``delivery``: the dispatcher, the retry schedule and the disable policy;
- ``check``: invariant 6.

The outbox hears the ledger's write path from above: this package registers it with
:mod:`coalition.ledger.listeners` when it is imported, and ``partners/__init__.py`` imports
this package, so any process that imports anything of ``partners`` (every way a transfer is
posted: the operations, the import, the jobs, the API, the demo) has the outbox listening
before it can post one. The kernel imports nothing of it.
"""

from __future__ import annotations

from coalition.ledger import listeners
from partners.webhooks import outbox

listeners.listen(outbox.LISTENER)
