"""SQLite: the embedded default. Writers serialize on BEGIN IMMEDIATE; WAL lets readers run."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Table,
    and_,
    create_engine,
    event,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.pool import StaticPool

from celery_durable.persistence import tag_rows
from celery_durable.persistence.answer import Answer, Deferred
from celery_durable.persistence.dialect import Advance, CheckpointRow, Dialect, Engines, Start
from celery_durable.persistence.schema import checkpoints, executions, node_visits
from celery_durable.persistence.stream_rows import EmitRow, emits

BUSY_TIMEOUT_MS = 30_000


class SQLiteDialect(Dialect):
    """One pool for writes and reads; a commit is a short BEGIN IMMEDIATE transaction."""

    def create_engines(self) -> Engines:
        options: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if self.url in ("sqlite://", "sqlite:///:memory:"):
            # One connection for everyone, or every connection would see its own empty database.
            options["poolclass"] = StaticPool
        engine = create_engine(self.url, **options)
        _configure(engine)
        return Engines(engine=engine, reader=engine.execution_options(durable_read=True))

    def send(
        self, engines: Engines, advance: Advance, *, fenced: bool, wakes: bool
    ) -> Answer[bool]:
        """Nothing to overlap the caller's work with: the commit runs now, and its answer
        waits in the handle. Nobody to wake either: waiters poll."""
        return Deferred(lambda: _save(engines, advance, fenced=fenced))

    def send_start(self, engines: Engines, start: Start) -> Answer[bool]:
        return Deferred(lambda: _start(engines, start))

    def insert(self, table: Table) -> sqlite.Insert:
        return sqlite.insert(table)

    def lock_migrations(self, conn: Connection) -> None:
        """Nothing to take: the migration's BEGIN IMMEDIATE already holds the write lock."""

    def lock_name(self, conn: Connection, name: str) -> None:
        """Nothing to take: every write transaction's BEGIN IMMEDIATE holds the write lock."""

    def follow_ids(self, conn: Connection, column: Column[Any], top: int) -> None:
        """Nothing to move: SQLite generates the largest id + 1."""

    def waiter(self, execution_id: str) -> Waiter:
        return Waiter()

    def emit(self, engines: Engines, row: EmitRow) -> bool:
        """Place an emitted value after the run's current checkpoint; False when the run
        does not exist. The write lock BEGIN IMMEDIATE takes keeps commits out meanwhile."""
        with engines.engine.begin() as conn:
            version = conn.execute(
                select(executions.c.version).where(executions.c.id == row["execution_id"])
            ).scalar()
            if version is None:
                return False
            placed = conn.execute(
                select(func.max(emits.c.n)).where(
                    emits.c.execution_id == row["execution_id"], emits.c.after_seq == version
                )
            ).scalar()
            conn.execute(
                insert(emits).values(
                    **_pick(row, "execution_id", "kind", "node", "visit", "attempt", "data"),
                    after_seq=version,
                    n=(placed or 0) + 1,
                    created_at=row["now"],
                )
            )
        return True

    def stream_waiter(self, engines: Engines, keys: Iterable[str]) -> Waiter:
        """Nobody notifies: a stream looks again, soon at first (and after it found
        something), less often while nothing happens."""
        return Waiter()

    def close(self) -> None:
        """Nothing runs beside the pool."""


class Waiter:
    """SQLite has no notifications: sleep, and let the caller look again, soon at first."""

    first_pause = 0.002
    max_pause = 0.25

    def wait(self, timeout: float) -> None:
        """Sleep; None: look again, at everything."""
        time.sleep(timeout)

    def close(self) -> None:
        """Nothing to release."""


def _configure(engine: Engine) -> None:
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
        # readers (Engines.reader) begin deferred and never wait for a writer under WAL.
        if connection.get_execution_options().get("durable_read"):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def _save(engines: Engines, advance: Advance, *, fenced: bool) -> bool:
    """Two statements in one transaction."""
    condition = and_(
        executions.c.id == advance["execution_id"],
        executions.c.version == advance["expected_version"],
    )
    if fenced:
        condition = and_(
            condition,
            ~exists().where(
                node_visits.c.execution_id == advance["execution_id"],
                node_visits.c.kind == advance["kind"],
                node_visits.c.node == advance["node"],
                node_visits.c.visit == advance["visit"],
                node_visits.c.lease_token != advance["lease_token"],
            ),
        )
    with engines.engine.begin() as conn:
        advanced = conn.execute(
            update(executions)
            .where(condition)
            .values(
                **_pick(
                    advance, "state", "cursor", "graph_version", "status", "error", "finished_at"
                ),
                version=advance["seq"],
                updated_at=advance["now"],
                checksum=advance["row_checksum"],
            )
        )
        if advanced.rowcount != 1:
            return False
        row = _checkpoint(advance, advance["seq"], advance["visit"], advance["output"])
        row["state"] = advance["checkpoint_state"]
        conn.execute(insert(checkpoints).values(row))
    return True


def _start(engines: Engines, start: Start) -> bool:
    with engines.engine.begin() as conn:
        if conn.execute(
            select(executions.c.id).where(executions.c.id == start["execution_id"])
        ).first():
            return False
        conn.execute(
            insert(executions).values(
                **_pick(
                    start,
                    *("graph", "fingerprint", "graph_version", "status", "state", "cursor"),
                    "parent_id",
                ),
                id=start["execution_id"],
                version=0,
                error=None,
                created_at=start["now"],
                updated_at=start["now"],
                finished_at=None,
                checksum=start["row_checksum"],
            )
        )
        conn.execute(insert(checkpoints).values(_checkpoint(start, 0, 0, None)))
        if (tagged := tag_rows.written(start)) is not None:
            conn.execute(tagged)
    return True


def _checkpoint(row: CheckpointRow, seq: int, visit: int, output: str | None) -> dict[str, Any]:
    return {
        **_pick(row, "execution_id", "kind", "node", "state", "cursor", "meta", "checksum"),
        "seq": seq,
        "visit": visit,
        "output": output,
        "created_at": row["now"],
    }


def _pick(row: Mapping[str, Any], *names: str) -> dict[str, Any]:
    """The columns a row's keys name alike."""
    return {name: row[name] for name in names}
