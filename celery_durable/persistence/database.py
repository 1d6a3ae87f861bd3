"""The engine, created per process (never shared across a fork), and its dialect."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.exc import DBAPIError

from celery_durable.persistence import postgres, sqlite


class Database:
    """Owns one SQLAlchemy engine per process: a forked worker child builds its own pool."""

    def __init__(self, url: str, *, pool_size: int = 5) -> None:
        self.url = url
        self.pool_size = pool_size
        self.dialect: ModuleType = postgres if url.startswith("postgresql") else sqlite
        self._engine: Engine | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._held = threading.local()

    @property
    def is_postgres(self) -> bool:
        return self.dialect is postgres

    @property
    def engine(self) -> Engine:
        pid = os.getpid()
        if self._engine is None or self._pid != pid:
            with self._lock:
                if self._engine is None or self._pid != pid:
                    if self._engine is not None:
                        # Inherited from the parent: drop its sockets without closing them.
                        self._engine.dispose(close=False)
                    engine = create_engine(self.url, **self.dialect.engine_options(self))
                    self.dialect.configure(engine)
                    self._engine, self._pid = engine, pid
        return self._engine

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection each thread keeps checked out, in autocommit mode, for one-statement
        transactions on the hot path: no pool checkout, no BEGIN, one round trip per commit.

        A connection the server dropped is let go, so the next call opens a fresh one.
        """
        engine = self.engine
        conn: Connection | None = getattr(self._held, "conn", None)
        if conn is None or getattr(self._held, "engine", None) is not engine:
            conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._held.conn, self._held.engine = conn, engine
        try:
            yield conn
        except DBAPIError as exc:
            if exc.connection_invalidated:
                self._held.conn = None
            raise

    def dispose(self) -> None:
        with self._lock:
            if self._engine is not None and self._pid == os.getpid():
                self._engine.dispose()
            self._engine = None
