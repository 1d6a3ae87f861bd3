"""PostgreSQL: a node commit is one statement, so one round trip, and atomic by itself.

The statements are here; they run on the thread's held connection (held_connection.py) by
libpq's asynchronous calls (prepared.py); waiters and streams are woken by NOTIFY
(listener.py, stream_watch.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import Column, Connection, Table, create_engine, event, make_url, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import InvalidatePoolError

from celery_durable.constants import CHECKPOINTS_TABLE, EXECUTIONS_TABLE, NODE_VISITS_TABLE
from celery_durable.forks import ProcessLocal
from celery_durable.persistence import held_connection, tag_rows
from celery_durable.persistence.answer import Answer
from celery_durable.persistence.dialect import Advance, Dialect, Engines, Start
from celery_durable.persistence.listener import FINISHED_CHANNEL, Listener, Waiter
from celery_durable.persistence.prepared import Prepared
from celery_durable.persistence.stream_rows import EMITS_TABLE, STREAM_READERS_TABLE, EmitRow
from celery_durable.persistence.stream_watch import STREAM_CHANNEL, StreamWaiter
from celery_durable.persistence.tag_rows import TAGS_TABLE

# Any constant works; it only has to be the same in every process that migrates.
ADVISORY_LOCK_KEY = 0x0D0AB1E


_ADVANCE = f"""
WITH advanced AS (
    UPDATE {EXECUTIONS_TABLE}
       SET state = :state, cursor = :cursor, status = :status, error = :error,
           graph_version = :graph_version, version = :seq, updated_at = :now,
           finished_at = :finished_at, checksum = :row_checksum
     WHERE id = :execution_id AND version = :expected_version {{fence}}
 RETURNING {{returning}}
)
INSERT INTO {CHECKPOINTS_TABLE}
       (execution_id, seq, kind, node, visit, state, cursor, output, meta, checksum, created_at)
SELECT id, :seq, :kind, :node, :visit, :checkpoint_state, :cursor, :output, :meta, :checksum,
       :now
  FROM advanced
{{notify}}
{{streamed}}
RETURNING seq
"""

_FENCE = f"""
       AND NOT EXISTS (
           SELECT 1 FROM {NODE_VISITS_TABLE} v
            WHERE v.execution_id = :execution_id AND v.kind = :kind AND v.node = :node
              AND v.visit = :visit AND v.lease_token <> :lease_token)
"""

# A commit of a run someone streams wakes its streams (stream_watch.py says why only then):
# one index probe of a table that is empty while nobody streams.
_STREAMED = f"""
LEFT JOIN LATERAL (
    SELECT pg_notify('{STREAM_CHANNEL}',
                     json_build_object('id', {{id}}, 'graph', {{graph}}, 'seq', {{seq}})::text)
     WHERE EXISTS (
           SELECT 1 FROM {STREAM_READERS_TABLE} r
            WHERE r.key IN ('run:' || {{id}}, 'graph:' || {{graph}}, '*')
              AND r.expires_at > now())
) AS streamed ON true"""

# A run that ends wakes its waiters: NOTIFY is delivered on commit, so only for a real end.
# The notification carries the row as committed, checksum included, so a waiter has its
# answer without reading it back; a row over NOTIFY's 8000-byte limit goes as its id alone.
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
                returning="*" if wakes else "id, graph",
                notify=_NOTIFY if wakes else "",
                streamed=_STREAMED.format(id="advanced.id", graph="advanced.graph", seq=":seq"),
            )
        ),
    )
    for fenced in (False, True)
    for wakes in (False, True)
}

_START = f"""
WITH created AS (
    INSERT INTO {EXECUTIONS_TABLE}
           (id, graph, fingerprint, graph_version, status, version, state, cursor, error,
            created_at, updated_at, finished_at, parent_id, checksum)
    VALUES (:execution_id, :graph, :fingerprint, :graph_version, :status, 0, :state, :cursor,
            NULL, :now, :now, NULL, :parent_id, :row_checksum)
    ON CONFLICT (id) DO NOTHING
 RETURNING id
){{tagged}}
INSERT INTO {CHECKPOINTS_TABLE}
       (execution_id, seq, kind, node, visit, state, cursor, output, meta, checksum, created_at)
SELECT id, 0, :kind, :node, 0, :state, :cursor, NULL, :meta, :checksum, :now FROM created
{_STREAMED.format(id="created.id", graph=":graph", seq="0")}
RETURNING seq
"""

# A new run's tags (tag_rows.source), written by the start's own statement: only if it
# created the run, so a second start of the same id writes none.
_TAGGED: dict[tag_rows.Source, str] = {
    None: "",
    "own": f""",
tagged AS (
    INSERT INTO {TAGS_TABLE} (execution_id, key, value, created_at)
    SELECT created.id, t.key, t.value, :now
      FROM created CROSS JOIN jsonb_each_text(CAST(:tags AS jsonb)) AS t
)""",
    "parent": f""",
tagged AS (
    INSERT INTO {TAGS_TABLE} (execution_id, key, value, created_at)
    SELECT created.id, p.key, p.value, :now
      FROM created JOIN {TAGS_TABLE} p ON p.execution_id = :parent_id
)""",
}

START = {
    found: Prepared(
        f"durable_start{'_' + found if found else ''}", text(_START.format(tagged=tagged))
    )
    for found, tagged in _TAGGED.items()
}

# An emitted value, placed after the run's current checkpoint: the share lock on the row
# waits for a commit of the run in flight and holds off the next one, so the value and the
# commits cannot pass each other (stream_rows.py). Two values placed at once by parallel
# branches may pick the same ``n``: the second places nothing, returns no row, and is sent
# again (``PostgresDialect.emit``).
EMIT = Prepared(
    "durable_emit",
    text(f"""
WITH run AS (
    SELECT id, graph, version FROM {EXECUTIONS_TABLE} WHERE id = :execution_id FOR SHARE
), placed AS (
    INSERT INTO {EMITS_TABLE}
           (execution_id, after_seq, n, kind, node, visit, attempt, data, created_at)
    SELECT run.id, run.version,
           COALESCE((SELECT max(e.n) FROM {EMITS_TABLE} e
                      WHERE e.execution_id = run.id AND e.after_seq = run.version), 0) + 1,
           :kind, :node, :visit, :attempt, :data, :now
      FROM run
        ON CONFLICT DO NOTHING
 RETURNING execution_id, after_seq
)
SELECT placed.after_seq
  FROM placed CROSS JOIN run
{_STREAMED.format(id="run.id", graph="run.graph", seq="placed.after_seq")}
"""),
)
EXISTS = f"SELECT 1 FROM {EXECUTIONS_TABLE} WHERE id = %(execution_id)s"


def _refuse_closed(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """A pooled connection the server has closed (a restart, a failover) is not handed out:
    the pool drops it, and every connection older than it, and makes a new one."""
    if held_connection.server_closed(dbapi_connection):
        raise InvalidatePoolError("the server closed this connection")


class PostgresDialect(Dialect):
    """Node commits in one autocommitted statement; waiters woken by NOTIFY; migrations
    serialized by an advisory lock."""

    def __init__(self, url: str, pool_size: int) -> None:
        super().__init__(url, pool_size)
        # One listening thread and connection per process: a forked child starts its own.
        self._listener = ProcessLocal(lambda: Listener(make_url(self.url)))

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
        engine = create_engine(self.url, **options)
        for each in (engine, autocommit):
            event.listen(each, "checkout", _refuse_closed)
        return Engines(engine=engine, reader=autocommit)

    def send(
        self, engines: Engines, advance: Advance, *, fenced: bool, wakes: bool
    ) -> Answer[bool]:
        """The node commit, one autocommitted statement on the thread's held connection,
        sent and not yet answered (held_connection.send)."""
        return held_connection.send(engines.reader, SAVE[fenced, wakes], advance)

    def send_start(self, engines: Engines, start: Start) -> Answer[bool]:
        return held_connection.send(engines.reader, START[tag_rows.source(start)], start)

    def insert(self, table: Table) -> postgresql.Insert:
        return postgresql.insert(table)

    def lock_migrations(self, conn: Connection) -> None:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})

    def lock_name(self, conn: Connection, name: str) -> None:
        conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"), {"name": name}
        )

    def follow_ids(self, conn: Connection, column: Column[Any], top: int) -> None:
        # GREATEST with nextval: the sequence only ever moves on, past ids it gave out too.
        conn.execute(
            text(
                "SELECT setval(pg_get_serial_sequence(:table, :column), "
                "GREATEST(:top, nextval(pg_get_serial_sequence(:table, :column))))"
            ),
            {"table": column.table.name, "column": column.name, "top": top},
        )

    @contextmanager
    def planned_for_values(self, conn: Connection) -> Iterator[None]:
        """psycopg prepares a statement run five times on a connection, and PostgreSQL may
        then run it on one generic plan: for runs with customer=c-42 and env=prod, one that
        walks env=prod's third of the runs for every customer (30 to 100 ms at a million runs,
        against 1 ms planned for the values). Not prepared, each is planned for its values."""
        driver: psycopg.Connection[Any] = conn.connection.driver_connection  # type: ignore[assignment]
        threshold = driver.prepare_threshold
        driver.prepare_threshold = None
        try:
            yield
        finally:
            driver.prepare_threshold = threshold

    def waiter(self, execution_id: str) -> Waiter:
        return Waiter(self._listener.get(), execution_id)

    def emit(self, engines: Engines, row: EmitRow) -> bool:
        """Place an emitted value; False when the run does not exist."""
        while not held_connection.send(engines.reader, EMIT, row).result():
            # Nothing placed: a value placed at the same moment took its place (send it
            # again, to find the next), or there is no such run.
            with engines.reader.connect() as conn:
                found = conn.exec_driver_sql(EXISTS, {"execution_id": row["execution_id"]})
                if found.first() is None:
                    return False
        return True

    def stream_waiter(self, engines: Engines, keys: Iterable[str]) -> StreamWaiter:
        """Something to wait on until a run ``keys`` name commits or emits (or it is time
        to look again)."""
        return StreamWaiter(self._listener.get(), engines.reader, keys)

    def close(self) -> None:
        listener = self._listener.clear()
        if listener is not None:
            listener.close()
