"""Alembic environment for the catalogue: runs on the connection `catalogue.migrate` hands in.

Only online mode with a caller-supplied connection is supported: the catalogue always migrates
programmatically, inside the caller's (locked) transaction.
"""

from __future__ import annotations

from alembic import context

from catalogue.models import Base
from catalogue.search import include_name

config = context.config
connection = config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("catalogue migrations run through catalogue.migrate.upgrade(engine), not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=config.attributes.get("version_table", "linstudio_alembic_version"),
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    include_name=include_name,  # search objects outside the models (catalogue.search)
)
with context.begin_transaction():
    context.run_migrations()
