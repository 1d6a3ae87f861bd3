"""A statement sent on libpq's asynchronous calls, so that the caller works while PostgreSQL
executes and commits it.

A node's commit is a round trip in which the worker has nothing to do but wait, and after it
the worker builds the next node's message. Sent and collected apart (``send()`` returns an
``InFlight`` the caller collects), the message is built during the round trip and only
published once the commit has answered: the order that makes a commit come before what it
hands on is unchanged, and the wait is shorter.

psycopg's ``cursor.execute()`` sends and waits in one call and converts the query and its
parameters each time. Here the query is compiled once to ``$n`` placeholders, prepared once per
connection with the types the server infers (each parameter is a column's or a comparison's),
and the parameters go as text.
"""

from __future__ import annotations

import select
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import psycopg
from psycopg import pq
from psycopg.errors import error_from_result
from sqlalchemy import TextClause
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect

_NUMBERED = psycopg_dialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]
# Names this process prepared on a connection, kept in the pool's info for that connection.
PREPARED_KEY = "celery_durable.prepared"
# The server forgot the statement (DEALLOCATE ALL, DISCARD ALL on this connection): prepare
# it again, once. (A migration does not: the server plans it again itself, and what the
# statements return, one column, does not change.)
_FORGOTTEN = b"26000"


class Prepared:
    """One statement, compiled once, prepared on each connection the first time it runs there."""

    def __init__(self, name: str, statement: TextClause) -> None:
        compiled = statement.compile(dialect=_NUMBERED)
        self.name = name.encode()
        self.query = compiled.string.encode()
        self.order = tuple(compiled.positiontup or ())

    def send(
        self, conn: psycopg.Connection[Any], prepared: set[bytes], params: Mapping[str, Any]
    ) -> InFlight:
        """Put the statement on the wire and return without reading: the caller works while
        the server executes and commits it. ``prepared`` holds the names ``conn`` knows;
        errors are psycopg's."""
        values = [_text(params[key]) for key in self.order]
        self.put(conn, prepared, values)
        return InFlight(self, conn, prepared, values)

    def put(
        self, conn: psycopg.Connection[Any], prepared: set[bytes], values: list[bytes | None]
    ) -> None:
        """Prepare the statement on ``conn`` if it does not know it, and send ``values``."""
        pgconn = conn.pgconn
        if self.name not in prepared:
            # Once per connection; libpq's prepare blocks, as this does only the first time.
            made = pgconn.prepare(self.name, self.query, None)
            if made.status != pq.ExecStatus.COMMAND_OK:
                raise error_from_result(made, encoding=conn.info.encoding)
            prepared.add(self.name)
        pgconn.send_query_prepared(self.name, values)
        while pgconn.flush():
            _wait(pgconn, writing=True)


class InFlight:
    """A statement sent on a connection whose answer is not read yet: the connection can
    take no other statement until ``collect()`` has run."""

    __slots__ = ("conn", "prepared", "statement", "values")

    def __init__(
        self,
        statement: Prepared,
        conn: psycopg.Connection[Any],
        prepared: set[bytes],
        values: list[bytes | None],
    ) -> None:
        self.statement = statement
        self.conn = conn
        self.prepared = prepared
        self.values = values

    def collect(self) -> bool:
        """Wait for the answer: whether the statement returned a row. Errors are psycopg's;
        call it once."""
        conn, statement = self.conn, self.statement
        result = _result(conn.pgconn)
        if result.error_field(pq.DiagnosticField.SQLSTATE) == _FORGOTTEN:
            self.prepared.discard(statement.name)
            statement.put(conn, self.prepared, self.values)
            result = _result(conn.pgconn)
        if result.status != pq.ExecStatus.TUPLES_OK:
            raise error_from_result(result, encoding=conn.info.encoding)
        return result.ntuples > 0


def _text(value: Any) -> bytes | None:
    """A parameter in PostgreSQL's text format: the store binds strings, integers, times and
    NULLs only."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, datetime):
        return value.isoformat().encode()
    raise TypeError(f"cannot send a {type(value).__name__} as a statement parameter")


def _result(pgconn: pq.abc.PGconn) -> pq.abc.PGresult:
    """Wait for the statement's one result, and for the end of its answer."""
    while True:
        pgconn.consume_input()
        if not pgconn.is_busy():
            break
        _wait(pgconn, writing=False)
    result = pgconn.get_result()
    if result is None:
        raise psycopg.OperationalError("the server sent no result")
    while pgconn.get_result() is not None:
        pass
    return result


def _wait(pgconn: pq.abc.PGconn, writing: bool) -> None:
    """Block until the connection's socket can be read (or written)."""
    ready(pgconn, writing, None)


def ready(pgconn: pq.abc.PGconn, writing: bool, timeout: float | None) -> bool:
    """Whether the connection's socket can be read (or written) within ``timeout`` seconds
    (None: wait for it): poll(), which gevent's patching makes cooperative; select() where
    poll() is gone (eventlet's patching, Windows)."""
    sock = pgconn.socket
    if not hasattr(select, "poll"):
        found = select.select([] if writing else [sock], [sock] if writing else [], [], timeout)
        return any(found)
    poller = select.poll()
    poller.register(sock, select.POLLOUT if writing else select.POLLIN)
    return bool(poller.poll(None if timeout is None else int(timeout * 1000)))
