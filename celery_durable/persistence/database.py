"""The engines, created per process (never shared across a fork), and the dialect."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

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
        self._engines: Engines | None = None
        self._pid = 0
        self._lock = threading.Lock()

    @property
    def engines(self) -> Engines:
        """This process's pools, built on first use in each process."""
        pid = os.getpid()
        if self._engines is None or self._pid != pid:
            with self._lock:
                if self._engines is None or self._pid != pid:
                    if self._engines is not None:
                        # Inherited from the parent: drop its sockets without closing them.
                        for inherited in self._engines:
                            inherited.dispose(close=False)
                    self._engines, self._pid = self.dialect.create_engines(), pid
        return self._engines

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
        with self._lock:
            if self._engines is not None and self._pid == os.getpid():
                for engine in self._engines:
                    engine.dispose()
            self._engines = None
        self.dialect.close()
