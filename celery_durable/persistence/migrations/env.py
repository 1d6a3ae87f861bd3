"""Alembic environment: always driven from celery_durable.persistence.migrate."""

from alembic import context

from celery_durable.constants import ALEMBIC_VERSION_TABLE
from celery_durable.persistence.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=ALEMBIC_VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
