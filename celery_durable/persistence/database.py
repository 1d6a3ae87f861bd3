"""The engines, created per process (never shared across a fork), and the dialect."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from celery_durable.errors import DatabaseUnavailable
from celery_durable.forks import ProcessLocal
from celery_durable.persistence.dialect import Dialect, Engines
from celery_durable.persistence.postgres import PostgresDialect
from celery_durable.persistence.sqlite import SQLiteDialect
from celery_durable.settings import Settings

# SQLSTATE classes of a connection that could not be made or was lost: connection
# exceptions (08) and a server shutting down or starting up (57P).
_CONNECTION_STATES = ("08", "57P")


class Database:
    """Owns the engines of one process: a forked worker child builds its own pools.

    ``engine`` runs transactions; ``read()`` hands out connections for reads. What differs
    between PostgreSQL and SQLite is ``dialect``'s business, chosen once from the URL.

    ``default``: nobody chose the URL, it is the SQLite file in the working directory.
    ``schema_verified``: the schema was found current (or made so) in this process or the
    one it was forked from; the first use checks it, no later one (migrate.ensure).
    """

    def __init__(self, url: str, *, pool_size: int = 5, default: bool = False) -> None:
        self.pool_size = pool_size
        self.default = default
        self.schema_verified = False
        self.dialect = self._dialect(url)
        # A forked child builds its own pools and leaves the parent's sockets alone.
        self._engines = ProcessLocal(lambda: self.dialect.create_engines())

    @classmethod
    def of(cls, settings: Settings) -> Database:
        return cls(
            settings.database_url, pool_size=settings.pool_size, default=settings.default_database
        )

    def _dialect(self, url: str) -> Dialect:
        kind = PostgresDialect if url.startswith("postgresql") else SQLiteDialect
        return kind(url, self.pool_size)

    @property
    def url(self) -> str:
        return self.dialect.url

    @property
    def shown_url(self) -> str:
        """The URL as messages and logs show it: the password hidden, a SQLite path absolute."""
        if self.file is not None:
            return f"sqlite:///{self.file}"
        return make_url(self.url).render_as_string(hide_password=True)

    @property
    def embedded(self) -> bool:
        """SQLite: a file (or memory) of this application's own, not a shared server."""
        return isinstance(self.dialect, SQLiteDialect)

    @property
    def file(self) -> Path | None:
        """The SQLite file, absolute (a relative path is the working directory's); None for
        PostgreSQL and an in-memory SQLite database."""
        if not self.embedded:
            return None
        name = make_url(self.url).database
        if not name or name == ":memory:" or name.startswith("file:"):
            return None
        return Path(name).absolute()

    @property
    def follows_working_directory(self) -> bool:
        """Whether the file depends on where the process was started: the default, or a
        relative path. Two processes started in two directories then use two databases."""
        name = make_url(self.url).database or ""
        return self.file is not None and (self.default or not Path(name).is_absolute())

    def hazard(self) -> str | None:
        """What to tell whoever uses a file found from the working directory: which file, and
        how to make every process use the same one. None for any other database."""
        if not self.follows_working_directory:
            return None
        why = "no database_url is set" if self.default else "database_url is a relative path"
        return (
            f"celery-durable: the database is {self.file}, found from the working directory "
            f"because {why}; a worker or client started in another directory uses another "
            f"file and never sees these runs. Set CELERY_DURABLE_DATABASE_URL={self.shown_url} "
            "(an absolute path) for every worker and client."
        )

    @property
    def engines(self) -> Engines:
        """This process's pools, built on first use in each process."""
        return self._engines.get()

    @property
    def engine(self) -> Engine:
        return self.engines.engine

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads: autocommit on PostgreSQL, a deferred BEGIN on SQLite (so a
        reader never waits for the write lock)."""
        with self.engines.reader.connect() as conn:
            yield conn

    @contextmanager
    def reachable(self) -> Iterator[None]:
        """A connection that cannot be made, or is lost, leaves the block as
        DatabaseUnavailable naming this database; other database errors leave as they are.

        For callers outside the worker: the worker's own paths wait out an outage on
        SQLAlchemy's errors, which they must still see."""
        try:
            yield
        except (OperationalError, InterfaceError) as exc:
            if not unreachable(exc):
                raise
            said = str(exc.orig).strip()
            cause = said.splitlines()[0] if said else type(exc.orig).__name__
            raise DatabaseUnavailable(self.shown_url, cause, server=not self.embedded) from exc

    def repoint(self, url: str, *, default: bool = False) -> None:
        """Use ``url`` from now on: this process's pools are closed and the schema will be
        checked again. What lets a test point a Durable built at import at its own database;
        every part of the Durable holds this object, so each follows."""
        self.dispose()
        self.dialect = self._dialect(url)
        self.default = default
        self.schema_verified = False

    def dispose(self) -> None:
        engines = self._engines.clear()
        for engine in engines or ():
            engine.dispose()
        self.dialect.close()


def unreachable(exc: DBAPIError) -> bool:
    """Whether ``exc`` says the database could not be reached, rather than refusing a
    statement: no connection was made (no statement), the connection was lost, or the
    driver reports a connection error (a SQLSTATE of its own, or none: libpq's client side)."""
    if exc.statement is None or exc.connection_invalidated:
        return True
    if not hasattr(exc.orig, "sqlstate"):
        return False
    state = getattr(exc.orig, "sqlstate", None)
    return state is None or str(state).startswith(_CONNECTION_STATES)
