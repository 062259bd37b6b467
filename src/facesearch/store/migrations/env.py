"""Alembic environment: the connection is handed in by ``facesearch.store.db.migrate``."""
from alembic import context

from facesearch.store import audit_table  # noqa: F401 - registers audit_log on Base.metadata
from facesearch.store.tables import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only when someone runs alembic by hand
    from sqlalchemy import create_engine

    connection = create_engine(context.config.get_main_option("sqlalchemy.url")).connect()
context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
