"""Alembic environment: run by ``coalition init`` (:func:`coalition.db.migrate`) with the
service's own engine.

The kernel's migrations build every table, the layers' above included, but this module imports
none of them: the revisions are explicit operations, and ``upgrade`` never reads
``target_metadata``. That is ``Base.metadata``, the one registry every table joins when its
module is imported: what a comparison with the models (``alembic.autogenerate``) reads, once
its caller has loaded the modules it compares (``tests/coalition/test_migrations.py`` loads
every module of ``coalition``, ``partners`` and ``settlement``, so a table no revision
creates cannot hide).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

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
