"""The engine, created per process (never shared across a fork), and its dialect."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from sqlalchemy import Connection, Engine, create_engine, make_url

from celery_durable.persistence import postgres, sqlite


class Database:
    """Owns the engines of one process: a forked worker child builds its own pools.

    ``engine`` runs transactions. On PostgreSQL a second pool of autocommit connections
    serves one-statement commits and reads: no BEGIN, no ROLLBACK on return, one round trip.
    """

    def __init__(self, url: str, *, pool_size: int = 5) -> None:
        self.url = url
        self.pool_size = pool_size
        self.dialect: ModuleType = postgres if url.startswith("postgresql") else sqlite
        self._engines: tuple[Engine, Engine] | None = None
        self._pid = 0
        self._listener: postgres.Listener | None = None
        self._listener_pid = 0
        self._lock = threading.Lock()

    @property
    def is_postgres(self) -> bool:
        return self.dialect is postgres

    def _both(self) -> tuple[Engine, Engine]:
        pid = os.getpid()
        if self._engines is None or self._pid != pid:
            with self._lock:
                if self._engines is None or self._pid != pid:
                    if self._engines is not None:
                        # Inherited from the parent: drop its sockets without closing them.
                        for inherited in self._engines:
                            inherited.dispose(close=False)
                    engine = create_engine(self.url, **self.dialect.engine_options(self))
                    self.dialect.configure(engine)
                    auto = engine
                    if self.is_postgres:
                        auto = create_engine(
                            self.url,
                            isolation_level="AUTOCOMMIT",
                            pool_reset_on_return=None,
                            **self.dialect.engine_options(self),
                        )
                    self._engines, self._pid = (engine, auto), pid
        return self._engines

    @property
    def engine(self) -> Engine:
        return self._both()[0]

    @property
    def read_engine(self) -> Engine:
        """The engine read() connections come from."""
        engine, auto = self._both()
        return auto if self.is_postgres else engine

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """An autocommit connection (PostgreSQL): each statement is its own transaction."""
        with self._both()[1].connect() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads: autocommit on PostgreSQL, a deferred BEGIN on SQLite (so a
        reader never waits for the write lock)."""
        engine, auto = self._both()
        if self.is_postgres:
            with auto.connect() as conn:
                yield conn
        else:
            with engine.connect().execution_options(durable_read=True) as conn:
                yield conn

    def waiter(self, execution_id: str) -> postgres.Waiter | sqlite.Waiter:
        """What Execution.wait() blocks on: notifications on PostgreSQL, a sleep on SQLite."""
        if not self.is_postgres:
            return sqlite.Waiter()
        pid = os.getpid()
        with self._lock:
            if self._listener is None or self._listener_pid != pid:
                # A forked child starts its own thread and connection; the parent's are not
                # usable here.
                self._listener = postgres.Listener(make_url(self.url))
                self._listener_pid = pid
            listener = self._listener
        return postgres.Waiter(listener, execution_id)

    def dispose(self) -> None:
        with self._lock:
            if self._engines is not None and self._pid == os.getpid():
                for engine in set(self._engines):
                    engine.dispose()
            self._engines = None
            listener, self._listener = self._listener, None
        if listener is not None and self._listener_pid == os.getpid():
            listener.close()
