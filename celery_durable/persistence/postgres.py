"""PostgreSQL: a node commit is one statement, so one round trip, and atomic by itself."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, text

from celery_durable.constants import CHECKPOINTS_TABLE, EXECUTIONS_TABLE, NODE_VISITS_TABLE

if TYPE_CHECKING:
    from celery_durable.persistence.database import Database


def engine_options(db: Database) -> dict[str, Any]:
    return {"pool_size": db.pool_size, "max_overflow": db.pool_size * 2, "pool_recycle": 1800}


def configure(engine: Engine) -> None:
    """Nothing to set: PostgreSQL's defaults are what the store relies on."""


_ADVANCE = f"""
WITH advanced AS (
    UPDATE {EXECUTIONS_TABLE}
       SET state = :state, cursor = :cursor, status = :status, error = :error,
           version = :seq, updated_at = :now, finished_at = :finished_at
     WHERE id = :execution_id AND version = :expected_version {{fence}}
 RETURNING id
)
INSERT INTO {CHECKPOINTS_TABLE}
       (execution_id, seq, kind, node, visit, state, cursor, output, meta, checksum, created_at)
SELECT id, :seq, :kind, :node, :visit, :state, :cursor, :output, :meta, :checksum, :now
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
FINISHED_CHANNEL = "durable_finished"
_NOTIFY = f"CROSS JOIN LATERAL (SELECT pg_notify('{FINISHED_CHANNEL}', advanced.id)) AS notified"

SAVE = {
    (fenced, finished): text(
        _ADVANCE.format(fence=_FENCE if fenced else "", notify=_NOTIFY if finished else "")
    )
    for fenced in (False, True)
    for finished in (False, True)
}

START = text(f"""
WITH created AS (
    INSERT INTO {EXECUTIONS_TABLE}
           (id, graph, fingerprint, status, version, state, cursor, error,
            created_at, updated_at, finished_at)
    VALUES (:execution_id, :graph, :fingerprint, :status, 0, :state, :cursor, NULL,
            :now, :now, NULL)
    ON CONFLICT (id) DO NOTHING
 RETURNING id
)
INSERT INTO {CHECKPOINTS_TABLE}
       (execution_id, seq, kind, node, visit, state, cursor, output, meta, checksum, created_at)
SELECT id, 0, :kind, :node, 0, :state, :cursor, NULL, :meta, :checksum, :now FROM created
RETURNING seq
""")


def save(db: Database, params: dict[str, Any], fenced: bool, finished: bool) -> bool:
    """Checkpoint + execution advance in one autocommitted statement; False if version is stale."""
    with db.autocommit() as conn:
        row = conn.execute(SAVE[fenced, finished], params).first()
    return row is not None


class Waiter:
    """Wakes when an execution ends, through LISTEN on a pooled connection.

    The final commit notifies, so the waiter blocks; it looks at the row again only when
    notified for its execution, or once a second in case a notification was missed.
    """

    first_pause = 1.0
    max_pause = 1.0

    def __init__(self, engine: Engine) -> None:
        self._proxy = engine.raw_connection()
        self._conn: Any = self._proxy.driver_connection
        assert self._conn is not None
        self._conn.autocommit = True
        self._conn.execute(f"LISTEN {FINISHED_CHANNEL}")

    def wait(self, execution_id: str, timeout: float) -> None:
        for notice in self._conn.notifies(timeout=timeout):
            if notice.payload == execution_id:
                return

    def close(self) -> None:
        try:
            self._conn.execute(f"UNLISTEN {FINISHED_CHANNEL}")
            self._conn.autocommit = False
        finally:
            self._proxy.close()


def start(db: Database, params: dict[str, Any]) -> bool:
    """Insert the execution and its start checkpoint; False when the id already exists."""
    with db.autocommit() as conn:
        row = conn.execute(START, params).first()
    return row is not None
