"""Alembic's environment: the revisions run on the connection the store hands over, inside its
transaction; there is no URL or ini file to read."""

from __future__ import annotations

from alembic import context

import fermion.store  # noqa: F401 - imports every module whose models are on Base
from fermion.store._models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through fermion.store (Store, or python -m fermion.store.migrations)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # autogenerate writes batch operations: SQLite cannot ALTER a column in place
    on_version_apply=config.attributes.get("on_version_apply"),
)
with context.begin_transaction():  # joins the store's transaction rather than opening one
    context.run_migrations()
