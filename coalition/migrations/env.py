"""Alembic environment: run by ``coalition init`` with the service's own engine."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

import coalition.audit
import coalition.idempotency
import coalition.models
import coalition.outbox
import partners.models
import partners.ratelimit
import partners.replay
import partners.signin
import settlement.models
import settlement.payments.models  # noqa: F401  (the payment tables)
from coalition.db import Base

engine: Engine = context.config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
# (imported to register their tables on the metadata)
assert coalition.models and coalition.idempotency and coalition.audit and coalition.outbox
assert partners.models and partners.replay and partners.ratelimit and partners.signin
