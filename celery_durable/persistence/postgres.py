"""PostgreSQL: a node commit is one statement, so one round trip, and atomic by itself."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from sqlalchemy import URL, Connection, Engine, Table, create_engine, make_url, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError

from celery_durable.constants import CHECKPOINTS_TABLE, EXECUTIONS_TABLE, NODE_VISITS_TABLE
from celery_durable.persistence.dialect import Advance, Dialect, Engines, Start
from celery_durable.persistence.prepared import PREPARED_KEY, Prepared

logger = logging.getLogger(__name__)
LISTEN_READY_TIMEOUT = 5.0
LISTEN_POLL = 1.0
# Any constant works; it only has to be the same in every process that migrates.
ADVISORY_LOCK_KEY = 0x0D0AB1E


_ADVANCE = f"""
WITH advanced AS (
    UPDATE {EXECUTIONS_TABLE}
       SET state = :state, cursor = :cursor, status = :status, error = :error,
           version = :seq, updated_at = :now, finished_at = :finished_at,
           checksum = :row_checksum
     WHERE id = :execution_id AND version = :expected_version {{fence}}
 RETURNING {{returning}}
)
INSERT INTO {CHECKPOINTS_TABLE}
       (execution_id, seq, kind, node, visit, state, cursor, output, meta, checksum, created_at)
SELECT id, :seq, :kind, :node, :visit, :checkpoint_state, :cursor, :output, :meta, :checksum,
       :now
  FROM advanced
{{notify}}
RETURNING seq
"""

_FENCE = f"""
       AND NOT EXISTS (
           SELECT 1 FROM {NODE_VISITS_TABLE} v
            WHERE v.execution_id = :execution_id AND v.kind = :kind AND v.node = :node
              AND v.visit = :visit AND v.lease_token <> :lease_token)
"""

# A run that ends wakes its waiters: NOTIFY is delivered on commit, so only for a real end.
# The notification carries the row as committed, checksum included, so a waiter has its
# answer without reading it back; a row over NOTIFY's 8000-byte limit goes as its id alone.
FINISHED_CHANNEL = "durable_finished"
NOTICE_LIMIT = 7900
_NOTIFY = f"""
CROSS JOIN LATERAL (SELECT row_to_json(advanced)::text AS row_json) AS ended
CROSS JOIN LATERAL (
    SELECT pg_notify('{FINISHED_CHANNEL}',
                     CASE WHEN octet_length(ended.row_json) < {NOTICE_LIMIT} THEN ended.row_json
                          ELSE json_build_object('id', advanced.id)::text END)
) AS notified"""

SAVE = {
    (fenced, wakes): Prepared(
        f"durable_save_{int(fenced)}{int(wakes)}",
        text(
            _ADVANCE.format(
                fence=_FENCE if fenced else "",
                returning="*" if wakes else "id",
                notify=_NOTIFY if wakes else "",
            )
        ),
    )
    for fenced in (False, True)
    for wakes in (False, True)
}

START = Prepared(
    "durable_start",
    text(f"""
WITH created AS (
    INSERT INTO {EXECUTIONS_TABLE}
           (id, graph, fingerprint, status, version, state, cursor, error,
            created_at, updated_at, finished_at, parent_id, checksum)
    VALUES (:execution_id, :graph, :fingerprint, :status, 0, :state, :cursor, NULL,
            :now, :now, NULL, :parent_id, :row_checksum)
    ON CONFLICT (id) DO NOTHING
 RETURNING id
)
INSERT INTO {CHECKPOINTS_TABLE}
       (execution_id, seq, kind, node, visit, state, cursor, output, meta, checksum, created_at)
SELECT id, 0, :kind, :node, 0, :state, :cursor, NULL, :meta, :checksum, :now FROM created
RETURNING seq
"""),
)


class _Held(threading.local):
    """The pooled connection this thread keeps checked out for node commits and starts."""

    engine: Engine | None = None
    pooled: Any = None
    since = 0.0
    pid = 0


_held = _Held()
# A held connection goes back to the pool this often, so pool_recycle still applies to it.
HOLD_SECONDS = 30.0


def _connection(engine: Engine) -> Any:
    """This thread's connection of ``engine``'s pool: a checkout and its return cost more
    than the statement's own client side, so the commit path keeps one."""
    held, now = _held, time.monotonic()
    if held.pid != os.getpid():
        # Forked: the parent's connection is the parent's; let go of it without a word.
        held.pooled, held.engine, held.pid = None, None, os.getpid()
    if held.pooled is not None and (held.engine is not engine or now - held.since > HOLD_SECONDS):
        _release()
    if held.pooled is None:
        held.pooled, held.engine, held.since = engine.raw_connection(), engine, now
    return held.pooled


def _release(broken: BaseException | None = None) -> None:
    held = _held
    pooled, held.pooled, held.engine = held.pooled, None, None
    if pooled is None:
        return
    if broken is not None:
        pooled.invalidate(broken)
    pooled.close()


def _one_row(
    engines: Engines,
    statement: Prepared,
    params: Mapping[str, Any],
    meanwhile: Callable[[], object] | None,
) -> bool:
    """Run one autocommitted statement on this thread's held connection; whether it returned
    a row. ``meanwhile`` runs while the server works (prepared.py). Errors come out as
    SQLAlchemy's, as everywhere else; a connection error, or an interruption mid-statement,
    drops the connection."""
    pooled = _connection(engines.reader)
    try:
        known = pooled.info.setdefault(PREPARED_KEY, set())
        return statement.run(pooled.driver_connection, known, params, meanwhile)
    except psycopg.Error as exc:
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            _release(exc)
        sql = statement.query.decode()
        raise DBAPIError.instance(sql, dict(params), exc, psycopg.Error) from exc
    except BaseException as exc:
        _release(exc)
        raise


class PostgresDialect(Dialect):
    """Node commits in one autocommitted statement; waiters woken by NOTIFY; migrations
    serialized by an advisory lock."""

    def __init__(self, url: str, pool_size: int) -> None:
        super().__init__(url, pool_size)
        self._listener: Listener | None = None
        self._listener_pid = 0
        self._lock = threading.Lock()

    def create_engines(self) -> Engines:
        # PostgreSQL's defaults are what the store relies on: no session settings to make.
        options: dict[str, Any] = {
            "pool_size": self.pool_size,
            "max_overflow": self.pool_size * 2,
            "pool_recycle": 1800,
        }
        autocommit = create_engine(
            self.url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None, **options
        )
        return Engines(engine=create_engine(self.url, **options), reader=autocommit)

    def save(
        self,
        engines: Engines,
        advance: Advance,
        *,
        fenced: bool,
        wakes: bool,
        meanwhile: Callable[[], object] | None = None,
    ) -> bool:
        """The node commit, one autocommitted statement (see ``_one_row``)."""
        return _one_row(engines, SAVE[fenced, wakes], advance, meanwhile)

    def start(
        self, engines: Engines, start: Start, meanwhile: Callable[[], object] | None = None
    ) -> bool:
        return _one_row(engines, START, start, meanwhile)

    def insert(self, table: Table) -> postgresql.Insert:
        return postgresql.insert(table)

    def lock_migrations(self, conn: Connection) -> None:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})

    def lock_name(self, conn: Connection, name: str) -> None:
        conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"), {"name": name}
        )

    def waiter(self, execution_id: str) -> Waiter:
        pid = os.getpid()
        with self._lock:
            if self._listener is None or self._listener_pid != pid:
                # A forked child starts its own thread and connection; the parent's are not
                # usable here.
                self._listener = Listener(make_url(self.url))
                self._listener_pid = pid
            listener = self._listener
        return Waiter(listener, execution_id)

    def close(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None and self._listener_pid == os.getpid():
            listener.close()


class _Slot:
    """One waiter's wake-up, and the row its notification carried, if it carried one."""

    __slots__ = ("event", "row")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.row: dict[str, Any] | None = None


def read_notice(payload: str) -> tuple[str, dict[str, Any] | None]:
    """The execution id a notification names, and the row it carries (None: read it). A
    worker of an earlier release sends the bare id."""
    if payload.startswith("{"):
        try:
            notice = json.loads(payload)
        except ValueError:
            notice = None
        if isinstance(notice, dict) and isinstance(notice.get("id"), str):
            return notice["id"], notice if "version" in notice else None
    return payload, None


class Listener:
    """One LISTEN connection per process, read by a daemon thread that wakes the waiters of
    the execution named in each notification.

    Waiting costs no connection and no LISTEN/UNLISTEN round trips of its own. A waiter still
    looks at the row itself once a second, and every waiter is woken to look when the
    connection is (re)made, so a notification lost in between delays a waiter, never strands it.
    """

    def __init__(self, url: URL) -> None:
        self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._waiting: dict[str, set[_Slot]] = {}
        self._lock = threading.Lock()
        self._tried = threading.Event()  # the first connection attempt is over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(self, execution_id: str) -> _Slot:
        """A slot set when ``execution_id`` ends (or when the waiter should look again)."""
        slot = _Slot()
        with self._lock:
            self._waiting.setdefault(execution_id, set()).add(slot)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="durable-listener", daemon=True
                )
                self._thread.start()
        # Only a notification sent after LISTEN is heard: the first time, wait for the thread
        # to LISTEN (or to fail; waiters then look once a second).
        self._tried.wait(LISTEN_READY_TIMEOUT)
        return slot

    def unsubscribe(self, execution_id: str, slot: _Slot) -> None:
        with self._lock:
            waiting = self._waiting.get(execution_id)
            if waiting is not None:
                waiting.discard(slot)
                if not waiting:
                    del self._waiting[execution_id]

    def close(self) -> None:
        """Stop listening; the thread ends within LISTEN_POLL seconds, on its own."""
        self._stop.set()

    def _wake(self, execution_id: str | None = None, row: dict[str, Any] | None = None) -> None:
        with self._lock:
            if execution_id is None:
                woken = [slot for slots in self._waiting.values() for slot in slots]
            else:
                woken = list(self._waiting.get(execution_id, ()))
        for slot in woken:
            slot.row = row
            slot.event.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {FINISHED_CHANNEL}")
                    self._wake()  # whatever ended while nobody listened: look again
                    self._tried.set()
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=LISTEN_POLL):
                            self._wake(*read_notice(notice.payload))
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    logger.warning("listening for finished runs failed (%s); retrying in 1s", exc)
            finally:
                self._tried.set()
                self._wake()
            self._stop.wait(1.0)


class Waiter:
    """Wakes when one execution ends, through the process's Listener."""

    first_pause = 1.0
    max_pause = 1.0

    def __init__(self, listener: Listener, execution_id: str) -> None:
        self._listener = listener
        self._execution_id = execution_id
        self._slot = listener.subscribe(execution_id)

    def wait(self, timeout: float) -> dict[str, Any] | None:
        slot = self._slot
        if not slot.event.wait(timeout):
            return None
        slot.event.clear()
        row, slot.row = slot.row, None
        return row

    def close(self) -> None:
        self._listener.unsubscribe(self._execution_id, self._slot)
