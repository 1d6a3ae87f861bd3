"""The pooled connection each thread keeps checked out for node commits and starts.

A checkout and its return cost more than the statement's own client side, so the commit path
keeps one connection per thread (and per process: a forked child never uses its parent's).
Statements go out on it one at a time: ``send()`` puts one on the wire and returns a
``Sent`` whose ``result()`` must be collected before this thread sends the next.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import psycopg
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, StatementError

from celery_durable.forks import ThreadLocal
from celery_durable.persistence.answer import Answer
from celery_durable.persistence.prepared import PREPARED_KEY, InFlight, Prepared, ready

# A held connection goes back to the pool this often, so pool_recycle still applies to it.
HOLD_SECONDS = 30.0


class _Held:
    """This thread's checked-out connection, and the statement still outstanding on it."""

    __slots__ = ("engine", "outstanding", "pooled", "since")

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.pooled: Any = None
        self.since = 0.0
        self.outstanding: Sent | None = None


_held: ThreadLocal[_Held] = ThreadLocal(_Held)


def current() -> Any:
    """This thread's held (pooled) connection, or None when it holds none."""
    held = _held.peek()
    return None if held is None else held.pooled


def send(engine: Engine, statement: Prepared, params: Mapping[str, Any]) -> Sent:
    """Send one autocommitted statement on this thread's held connection of ``engine``'s
    pool; its ``result()`` says whether it returned a row. Errors come out as SQLAlchemy's,
    as everywhere else, from ``send`` or from ``result``; a connection error, or an
    interruption mid-statement, drops the connection."""
    held = _held.get()
    if held.outstanding is not None:
        # Its owner broke the rule and has not collected it: the connection takes one
        # statement at a time, so collect it now and keep its answer for whoever asks.
        held.outstanding.settle()
    try:
        pooled = _connection(held, engine)
        wire = statement.send(
            pooled.driver_connection, pooled.info.setdefault(PREPARED_KEY, set()), params
        )
    except psycopg.Error as exc:
        raise _translated(held, statement, params, exc) from exc
    except BaseException as exc:
        _release(held, exc)  # interrupted mid-statement: the connection's state is unknown
        raise
    sent = Sent(held, statement, params, wire)
    held.outstanding = sent
    return sent


class Sent(Answer[bool]):
    """A statement on the held connection whose answer is not read yet."""

    def __init__(
        self, held: _Held, statement: Prepared, params: Mapping[str, Any], wire: InFlight
    ) -> None:
        self._held = held
        self._statement = statement
        self._params = params
        self._wire = wire

    def _collect(self) -> bool:
        held = self._held
        try:
            return self._wire.collect()
        except psycopg.Error as exc:
            raise _translated(held, self._statement, self._params, exc) from exc
        except BaseException as exc:
            _release(held, exc)
            raise
        finally:
            if held.outstanding is self:
                held.outstanding = None


def _connection(held: _Held, engine: Engine) -> Any:
    now = time.monotonic()
    if held.pooled is not None and server_closed(held.pooled.driver_connection):
        # The server went away (a restart, a failover): a new connection finds the new one.
        _release(held, psycopg.OperationalError("the server closed the held connection"))
    if held.pooled is not None and (held.engine is not engine or now - held.since > HOLD_SECONDS):
        _release(held)
    if held.pooled is None:
        held.pooled, held.engine, held.since = engine.raw_connection(), engine, now
    return held.pooled


def server_closed(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server has closed ``conn``: one poll() of its socket, no round trip. An
    idle connection's socket is readable only when the server hung up or sent a notice."""
    pgconn = conn.pgconn
    if pgconn.status != psycopg.pq.ConnStatus.OK:
        return True
    if not ready(pgconn, False, 0):
        return False
    try:
        pgconn.consume_input()
    except psycopg.OperationalError:
        return True
    return pgconn.status != psycopg.pq.ConnStatus.OK


def _translated(
    held: _Held, statement: Prepared, params: Mapping[str, Any], exc: psycopg.Error
) -> StatementError:
    """SQLAlchemy's error for ``exc``, having dropped the connection if it cannot be trusted."""
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        _release(held, exc)
    return DBAPIError.instance(statement.query.decode(), dict(params), exc, psycopg.Error)


def _release(held: _Held, broken: BaseException | None = None) -> None:
    pooled, held.pooled, held.engine = held.pooled, None, None
    if pooled is None:
        return
    if broken is not None:
        pooled.invalidate(broken)
    pooled.close()
