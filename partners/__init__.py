"""Who may act and on what terms: partners, rate cards, partner operations, API keys, and
webhooks.

Importing any part of ``partners`` imports :mod:`partners.webhooks`, which registers the webhook
outbox with the ledger's write path: no process can post a transfer through ``partners``
without the outbox listening (docs/architecture.md).
"""

import partners.webhooks  # noqa: F401  (registers the outbox with the ledger)
