"""PostgreSQL's node commit on libpq's asynchronous calls (persistence/prepared.py): send()
returns while the statement is in flight, result() collects it, and the statement survives
what a server or a deploy does to its connection."""

from __future__ import annotations

import select
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import pq
from sqlalchemy.exc import OperationalError

from celery_durable.errors import VersionConflict
from celery_durable.persistence import held_connection, migrate
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
    pooled = held_connection.current()
    assert pooled is not None
    return pooled.driver_connection  # type: ignore[no-any-return]


def test_send_returns_while_the_commit_is_in_flight(store: CheckpointStore) -> None:
    _start(store)
    pending = store.send(_commit(0))
    # Sent and not yet answered: libpq says a command is in progress.
    assert _held().pgconn.transaction_status == pq.TransactionStatus.ACTIVE
    assert pending.result().seq == 1
    assert store.get_execution(EID).version == 1
    assert _held().pgconn.transaction_status == pq.TransactionStatus.IDLE


def test_send_does_not_wait_for_the_server(store: CheckpointStore) -> None:
    """The commit waits on a row lock another transaction holds: send() returns anyway, and
    the work done before result() happens before the commit does."""
    _start(store)
    with store.db.engine.connect() as blocker:
        blocker.exec_driver_sql(f"SELECT 1 FROM durable_executions WHERE id = '{EID}' FOR UPDATE")
        pending = store.send(_commit(0))
        # Still in flight, so still not committed: another connection sees version 0.
        assert store.get_execution(EID).version == 0
        blocker.rollback()
    assert pending.result().seq == 1
    assert store.get_execution(EID).version == 1


def test_a_conflict_is_raised_by_result_and_the_connection_is_usable_after(
    store: CheckpointStore,
) -> None:
    _start(store)
    pending = store.send(_commit(5))
    with pytest.raises(VersionConflict) as raised:
        pending.result()
    with pytest.raises(VersionConflict) as again:  # a second call raises the same again
        pending.result()
    assert again.value is raised.value
    assert store.send(_commit(0)).result().seq == 1
    assert store.get_execution(EID).version == 1


def test_an_uncollected_commit_is_collected_by_the_next_send(store: CheckpointStore) -> None:
    """The caller broke the rule (one statement outstanding per thread): the next send
    collects the first, and its owner still gets its answer."""
    _start(store)
    first = store.send(_commit(0))
    second = store.send(_commit(1, "b"))
    assert second.result().seq == 2
    assert first.result().seq == 1
    assert store.get_execution(EID).version == 2


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
    assert held_connection.current() is None  # dropped, not handed out again
    store.save(_commit(1, "b"))
    assert store.get_execution(EID).version == 2
    assert _held().info.backend_pid != pid


def test_without_poll_the_commit_waits_with_select(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """eventlet's patching removes select.poll (so does Windows): the commit still waits."""
    _start(store)
    monkeypatch.delattr(select, "poll")
    store.send(_commit(0)).result()
    store.save(_commit(1, "b", status=Status.SUCCEEDED))
    assert store.get_execution(EID).status == Status.SUCCEEDED
