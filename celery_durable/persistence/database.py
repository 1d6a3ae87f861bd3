"""The engines, created per process (never shared across a fork), and the dialect."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

from celery_durable.forks import ProcessLocal
from celery_durable.persistence.dialect import Dialect, Engines
from celery_durable.persistence.postgres import PostgresDialect
from celery_durable.persistence.sqlite import SQLiteDialect


class Database:
    """Owns the engines of one process: a forked worker child builds its own pools.

    ``engine`` runs transactions; ``read()`` hands out connections for reads. What differs
    between PostgreSQL and SQLite is ``dialect``'s business, chosen once from the URL.
    """

    def __init__(self, url: str, *, pool_size: int = 5) -> None:
        kind = PostgresDialect if url.startswith("postgresql") else SQLiteDialect
        self.dialect: Dialect = kind(url, pool_size)
        # A forked child builds its own pools and leaves the parent's sockets alone.
        self._engines = ProcessLocal(self.dialect.create_engines)

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

    def dispose(self) -> None:
        engines = self._engines.clear()
        for engine in engines or ():
            engine.dispose()
        self.dialect.close()
