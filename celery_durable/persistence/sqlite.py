"""SQLite: the embedded default. Writers serialize on BEGIN IMMEDIATE; WAL lets readers run."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, and_, event, exists, insert, select, update
from sqlalchemy.pool import StaticPool

from celery_durable.persistence.schema import checkpoints, executions, node_visits

if TYPE_CHECKING:
    from celery_durable.persistence.database import Database

BUSY_TIMEOUT_MS = 30_000


def engine_options(db: Database) -> dict[str, Any]:
    options: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
    if db.url in ("sqlite://", "sqlite:///:memory:"):
        # One connection for everyone, or every connection would see its own empty database.
        options["poolclass"] = StaticPool
    return options


def configure(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE instead of pysqlite's BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        # Writers take the write lock up front, so two never deadlock upgrading a read lock;
        # readers (Database.read) begin deferred and never wait for a writer under WAL.
        if connection.get_execution_options().get("durable_read"):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


class Waiter:
    """SQLite has no notifications: sleep, and let the caller look again, soon at first."""

    first_pause = 0.002
    max_pause = 0.25

    def wait(self, timeout: float) -> None:
        time.sleep(timeout)

    def close(self) -> None:
        """Nothing to release."""


def save(db: Database, params: dict[str, Any], fenced: bool, finished: bool) -> bool:
    """Checkpoint plus execution advance in one transaction; False on a stale version."""
    condition = and_(
        executions.c.id == params["execution_id"],
        executions.c.version == params["expected_version"],
    )
    if fenced:
        condition = and_(
            condition,
            ~exists().where(
                node_visits.c.execution_id == params["execution_id"],
                node_visits.c.kind == params["kind"],
                node_visits.c.node == params["node"],
                node_visits.c.visit == params["visit"],
                node_visits.c.lease_token != params["lease_token"],
            ),
        )
    with db.engine.begin() as conn:
        advanced = conn.execute(
            update(executions)
            .where(condition)
            .values(
                state=params["state"],
                cursor=params["cursor"],
                status=params["status"],
                error=params["error"],
                version=params["seq"],
                updated_at=params["now"],
                finished_at=params["finished_at"],
            )
        )
        if advanced.rowcount != 1:
            return False
        conn.execute(insert(checkpoints).values(_checkpoint_row(params, params["seq"])))
    return True


def start(db: Database, params: dict[str, Any]) -> bool:
    """Insert the execution and its start checkpoint; False when the id already exists."""
    with db.engine.begin() as conn:
        if conn.execute(
            select(executions.c.id).where(executions.c.id == params["execution_id"])
        ).first():
            return False
        conn.execute(
            insert(executions).values(
                id=params["execution_id"],
                graph=params["graph"],
                fingerprint=params["fingerprint"],
                status=params["status"],
                version=0,
                state=params["state"],
                cursor=params["cursor"],
                error=None,
                created_at=params["now"],
                updated_at=params["now"],
                finished_at=None,
            )
        )
        conn.execute(insert(checkpoints).values(_checkpoint_row(params, 0)))
    return True


def _checkpoint_row(params: dict[str, Any], seq: int) -> dict[str, Any]:
    return {
        "execution_id": params["execution_id"],
        "seq": seq,
        "kind": params["kind"],
        "node": params["node"],
        "visit": params.get("visit", 0),
        "state": params["state"],
        "cursor": params["cursor"],
        "output": params.get("output"),
        "meta": params.get("meta"),
        "checksum": params["checksum"],
        "created_at": params["now"],
    }
