"""Apply the Alembic migrations shipped in the package; running again is a no-op. And the
check at a database's first use in a process: is its schema the one this code was built for?
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from celery_durable.constants import ALEMBIC_VERSION_TABLE
from celery_durable.errors import DatabaseUnavailable, NoDatabase, SchemaNotMigrated
from celery_durable.persistence.database import Database

MIGRATIONS = Path(__file__).with_name("migrations")
logger = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


class UsesDatabase(Protocol):
    db: Database


C = TypeVar("C", bound=UsesDatabase)


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@functools.cache
def revisions() -> tuple[str, ...]:
    """Every revision shipped, newest first (read once: it loads every migration script)."""
    script = ScriptDirectory.from_config(_config())
    return tuple(r.revision for r in script.walk_revisions())


def head() -> str:
    return revisions()[0]


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
    db.schema_verified = True
    return before, head()


def ensure(db: Database, *, create: bool) -> None:
    """Before the first use of ``db`` in this process: its schema must be this code's.

    Checked once: a later call (and a process forked after it) returns at once. On SQLite,
    the embedded store, a first use that writes (``create``: starting a run, a worker
    starting) creates or upgrades the schema, file included; one that only reads never
    creates the file (NoDatabase) nor changes it (SchemaNotMigrated). On PostgreSQL, shared
    by a fleet, migrating is a deploy step: SchemaNotMigrated names the command. A database
    that cannot be reached raises SQLAlchemy's error (``Database.reachable`` translates it).
    """
    if db.schema_verified:
        return
    file = db.file
    if file is not None and not create and not file.exists():
        raise NoDatabase(str(file), default=db.default)
    found = current(db)
    if found is not None and found not in revisions():
        logger.warning(
            "celery-durable: the database %s is at schema revision %s, which this "
            "celery-durable (at %s) does not know: a newer version migrated it. Upgrade "
            "celery-durable here to the version the rest of the fleet runs.",
            db.shown_url,
            found,
            head(),
        )
    elif found != head():
        if not (create and db.embedded):
            raise SchemaNotMigrated(db.shown_url, found, head())
        before, after = upgrade(db)
        done = "created" if before is None else f"upgraded from {before}"
        logger.info("celery-durable: schema of %s %s at %s", db.shown_url, done, after)
    db.schema_verified = True


def uses_database(
    *, creates: bool = False
) -> Callable[[Callable[Concatenate[C, P], R]], Callable[Concatenate[C, P], R]]:
    """For a client's methods that use the database (Durable's): the first call in this
    process runs ``ensure`` (``creates``: as a write) and says which file when it was found
    from the working directory, no later call does; and a database that cannot be reached
    raises DatabaseUnavailable, not the driver's error. The worker's paths do not come here:
    they wait out an outage on SQLAlchemy's errors."""

    def decorate(method: Callable[Concatenate[C, P], R]) -> Callable[Concatenate[C, P], R]:
        @functools.wraps(method)
        def first_checked(client: C, /, *args: P.args, **kwargs: P.kwargs) -> R:
            db = client.db
            with db.reachable():
                if not db.schema_verified:
                    ensure(db, create=creates)
                    if hazard := db.hazard():
                        logger.warning("%s", hazard)
                return method(client, *args, **kwargs)

        return first_checked

    return decorate


def check_at_worker_start(db: Database) -> None:
    """A worker's first use of the database, before it says ready: a schema not migrated
    raises SchemaNotMigrated, which stops it (on SQLite the schema is made current instead);
    a database down only delays it, as its nodes wait out an outage."""
    try:
        with db.reachable():
            ensure(db, create=True)
    except DatabaseUnavailable as exc:
        logger.warning("%s This worker starts; its nodes wait for the database.", exc)


def tell_where(db: Database) -> None:
    """Once a worker is ready (its logging set up): which database it uses, and the warning
    when that file was found from its working directory."""
    logger.info("celery-durable: checkpoints in %s", db.shown_url)
    if hazard := db.hazard():
        logger.warning("%s", hazard)
