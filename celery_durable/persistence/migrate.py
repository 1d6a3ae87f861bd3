"""Apply the Alembic migrations shipped in the package; running again is a no-op."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from celery_durable.constants import ALEMBIC_VERSION_TABLE
from celery_durable.persistence.database import Database

MIGRATIONS = Path(__file__).with_name("migrations")


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def current(db: Database) -> str | None:
    with db.read() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": ALEMBIC_VERSION_TABLE})
        return context.get_current_revision()


def upgrade(db: Database) -> tuple[str | None, str]:
    """Bring the schema to the newest revision; returns (revision before, revision after).

    The dialect's migration lock serializes workers that start at the same moment.
    """
    config = _config()
    before = current(db)
    with db.engine.begin() as conn:
        db.dialect.lock_migrations(conn)
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    return before, head()
