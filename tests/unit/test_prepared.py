"""PostgreSQL's node commit on libpq's asynchronous calls (persistence/prepared.py): work runs
while the statement is in flight, and the statement survives what a server or a deploy does
to its connection."""

from __future__ import annotations

import select
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import pq
from sqlalchemy.exc import OperationalError

from celery_durable.persistence import migrate, postgres
from celery_durable.persistence.database import Database
from celery_durable.persistence.store import CheckpointStore
from celery_durable.status import Status
from tests.unit.test_store_contract import EID, _commit, _start

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def store(pg_url: str) -> Iterator[CheckpointStore]:
    db = Database(pg_url)
    migrate.upgrade(db)
    yield CheckpointStore(db)
    db.dispose()


def _held() -> psycopg.Connection[object]:
    """The connection this thread's commits go through."""
    pooled = postgres._held.pooled
    assert pooled is not None
    return pooled.driver_connection  # type: ignore[no-any-return]


def test_meanwhile_runs_while_the_commit_is_in_flight(store: CheckpointStore) -> None:
    _start(store)
    seen: list[pq.TransactionStatus] = []
    store.save(_commit(0), lambda: seen.append(_held().pgconn.transaction_status))
    # Sent and not yet answered: libpq says a command is in progress.
    assert seen == [pq.TransactionStatus.ACTIVE]
    assert store.get_execution(EID).version == 1
    assert _held().pgconn.transaction_status == pq.TransactionStatus.IDLE


@pytest.mark.parametrize("forget", ["DEALLOCATE ALL", "DISCARD ALL"])
def test_a_statement_the_server_forgot_is_prepared_again(
    store: CheckpointStore, forget: str
) -> None:
    _start(store)
    store.save(_commit(0))
    _held().execute(forget)
    store.save(_commit(1, "b"))
    assert store.get_execution(EID).version == 2


def test_a_migration_that_adds_a_column_does_not_break_a_prepared_commit(
    store: CheckpointStore,
) -> None:
    _start(store)
    # The statement of a commit that ends a wait, prepared here, notifies the row as committed.
    store.save(_commit(0, status=Status.NEEDS_INTERVENTION))
    with store.db.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE durable_executions ADD COLUMN later_release TEXT")
    store.save(_commit(1, "b", status=Status.SUCCEEDED))
    assert store.get_execution(EID).status == Status.SUCCEEDED


def test_a_connection_the_server_dropped_is_replaced(store: CheckpointStore) -> None:
    _start(store)
    store.save(_commit(0))
    pid = _held().info.backend_pid
    with store.db.engine.connect() as admin:
        admin.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
    with pytest.raises(OperationalError):
        store.save(_commit(1, "b"))
    assert postgres._held.pooled is None  # dropped, not handed out again
    store.save(_commit(1, "b"))
    assert store.get_execution(EID).version == 2
    assert _held().info.backend_pid != pid


def test_without_poll_the_commit_waits_with_select(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """eventlet's patching removes select.poll (so does Windows): the commit still waits."""
    _start(store)
    monkeypatch.delattr(select, "poll")
    store.save(_commit(0), lambda: None)
    store.save(_commit(1, "b", status=Status.SUCCEEDED))
    assert store.get_execution(EID).status == Status.SUCCEEDED
