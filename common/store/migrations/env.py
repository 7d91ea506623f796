"""Alembic's environment for the job store. It runs only on the connection that
common.store.db hands it (config.attributes["connection"]), inside the transaction that holds
the migration lock; it never opens one of its own."""
from __future__ import annotations

from alembic import context

from common.store.migrations.helpers import include_object
from common.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the job store's migrations through common.store.db.upgrade() or "
                       "`python -m common.store.migrations`, which pass a locked connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things: autogenerate renders batch (copy-and-move) operations.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    include_object=include_object,
)
with context.begin_transaction():  # the caller's transaction: a no-op here
    context.run_migrations()
