"""The checkpoint store's contract, run once on SQLite and once on PostgreSQL.

Every test builds a fresh, migrated database through the ``database_url`` fixture, so the two
backends must behave identically: same results, same errors, same guarantees under races.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, inspect, make_url, text, update

from celery_durable.errors import (
    CheckpointCorrupted,
    CheckpointNotFound,
    DuplicateCheckpoint,
    ExecutionNotFound,
    LeaseLost,
    NotJSONSerializable,
    VersionConflict,
)
from celery_durable.model.cursor import Cursor
from celery_durable.model.records import Commit, utcnow
from celery_durable.persistence import migrate
from celery_durable.persistence.database import Database
from celery_durable.persistence.gauges import ActiveRuns
from celery_durable.persistence.listener import Listener, read_notice
from celery_durable.persistence.schema import executions
from celery_durable.persistence.store import CheckpointStore
from celery_durable.persistence.visits import VisitLedger
from celery_durable.status import Status

pytestmark = pytest.mark.timeout(60)

EID = "exec-1"
REFUSED = (DuplicateCheckpoint, VersionConflict)


@dataclass
class Backend:
    db: Database
    store: CheckpointStore
    ledger: VisitLedger


@pytest.fixture
def backend(database_url: str) -> Iterator[Backend]:
    db = Database(database_url)
    migrate.upgrade(db)
    yield Backend(db, CheckpointStore(db), VisitLedger(db))
    db.dispose()


def _start(store: CheckpointStore, execution_id: str = EID) -> None:
    store.create_execution(
        execution_id=execution_id, graph="g", fingerprint="f" * 64, state={"n": 0}, cursor=Cursor()
    )


def _commit(expected: int, node: str = "a", visit: int = 1, **fields: Any) -> Commit:
    values: dict[str, Any] = {
        "execution_id": EID,
        "expected_version": expected,
        "kind": "node",
        "node": node,
        "visit": visit,
        "state": {"n": expected + 1},
        "cursor": Cursor(frontier=[(node, 1)]),
        "status": Status.RUNNING,
    }
    return Commit(**(values | fields))


def _schema(db: Database) -> dict[str, Any]:
    inspector = inspect(db.engine)
    return {
        table: (
            [column["name"] for column in inspector.get_columns(table)],
            sorted(index["name"] or "" for index in inspector.get_indexes(table)),
        )
        for table in sorted(inspector.get_table_names())
    }


# -- schema and executions --------------------------------------------------------------------


def test_migrate_creates_tables_and_upgrading_again_is_a_noop(database_url: str) -> None:
    # Given an empty database, When it is migrated twice
    db = Database(database_url)
    try:
        assert migrate.upgrade(db) == (None, migrate.head())
        first = _schema(db)
        assert migrate.upgrade(db) == (migrate.head(), migrate.head())
        # Then the tables exist and the second run changed nothing
        assert any("execution" in table for table in first)
        assert any("checkpoint" in table for table in first)
        assert _schema(db) == first
    finally:
        db.dispose()


def test_create_execution_is_idempotent_on_its_id(backend: Backend) -> None:
    store = backend.store
    record, created = store.create_execution(
        execution_id=EID,
        graph="g",
        fingerprint="f",
        state={"n": 0},
        cursor=Cursor(frontier=[("a", 1)]),
    )
    assert created and record.version == 0 and record.status is Status.RUNNING
    # When the same id is created again with other values
    again, created_again = store.create_execution(
        execution_id=EID, graph="other", fingerprint="x", state={"n": 99}, cursor=Cursor()
    )
    # Then nothing changed, and the start checkpoint (seq 0) is the only one
    assert created_again is False
    assert again == record == store.get_execution(EID)
    start = store.load(EID, 0)
    assert (start.kind, start.seq, start.state) == ("start", 0, {"n": 0})
    assert [cp.seq for cp in store.list(EID)] == [0]


# -- checkpoints --------------------------------------------------------------------------------


def test_checkpoints_round_trip(backend: Backend) -> None:
    store = backend.store
    _start(store)
    saved = [
        store.save(_commit(0, "a", output={"x": [1, "é"]}, meta={"worker": "w1"})),
        store.save(_commit(1, "b", kind="compensation", output=None)),
        store.save(_commit(2, "a", visit=2, output=3.5)),
    ]
    for cp in saved:
        loaded = store.load(EID, cp.seq)
        assert (loaded.state, loaded.cursor) == (cp.state, cp.cursor)
        assert (loaded.output, loaded.meta) == (cp.output, cp.meta)
        assert (loaded.node, loaded.visit, loaded.kind, loaded.checksum) == (
            cp.node,
            cp.visit,
            cp.kind,
            cp.checksum,
        )
    assert store.latest(EID) == store.load(EID, 3)
    assert [cp.seq for cp in store.list(EID)] == [0, 1, 2, 3]
    assert [cp.seq for cp in store.list(EID, kinds=["compensation"])] == [2]
    assert [cp.seq for cp in store.list(EID, kinds=["start", "node"])] == [0, 1, 3]
    found = store.find(EID, "node", "a", 2)
    assert found is not None and found.seq == 3
    assert store.find(EID, "node", "a", 3) is None
    assert store.latest("nobody") is None
    with pytest.raises(CheckpointNotFound):
        store.load(EID, 4)
    with pytest.raises(ExecutionNotFound):
        store.get_execution("nobody")


def test_save_advances_the_execution_row(backend: Backend) -> None:
    store = backend.store
    _start(store)
    store.save(_commit(0, "a", cursor=Cursor(frontier=[("b", 1)])))
    running = store.get_execution(EID)
    assert (running.version, running.status, running.finished_at) == (1, Status.RUNNING, None)
    assert (running.state, running.cursor, running.error) == (
        {"n": 1},
        Cursor(frontier=[("b", 1)]),
        None,
    )
    # When the last node commits a finished status
    error = {"type": "Boom", "message": "handled"}
    store.save(
        _commit(1, "b", status=Status.SUCCEEDED, state={"n": 2}, cursor=Cursor(), error=error)
    )
    done = store.get_execution(EID)
    assert (done.version, done.status, done.error) == (2, Status.SUCCEEDED, error)
    assert done.state == {"n": 2}
    assert done.finished_at is not None and done.finished_at >= running.updated_at
    assert store.latest(EID).seq == done.version  # type: ignore[union-attr]


def test_pruning_removes_a_run_with_its_checkpoints_and_visits(backend: Backend) -> None:
    store, ledger = backend.store, backend.ledger
    for eid in (EID, "exec-2"):
        _start(store, eid)
    store.save(_commit(0, status=Status.SUCCEEDED))
    ledger.record_failure(EID, "node", "b", 1, {"type": "E"}, None)
    # When the succeeded runs are pruned
    cutoff = utcnow() + timedelta(seconds=1)
    assert store.prune_batch(Status.SUCCEEDED, cutoff, batch=10) == 1
    # Then the run is gone with all it held, and the running one is untouched
    with pytest.raises(ExecutionNotFound):
        store.get_execution(EID)
    assert store.list(EID) == [] and ledger.get(EID, "node", "b", 1) is None
    assert [record.id for record in store.list_executions()] == ["exec-2"]
    assert store.prune_batch(Status.SUCCEEDED, cutoff, batch=10) == 0


def test_execution_gauges_count_runs_and_age_the_active_ones(backend: Backend) -> None:
    store = backend.store
    # Given runs of three graphs, one of them running without a commit for an hour
    runs = {
        "a1": ("alpha", Status.RUNNING),
        "a2": ("alpha", Status.RUNNING),
        "a3": ("alpha", Status.RUNNING),
        "b1": ("beta", Status.COMPENSATING),
        "b2": ("beta", Status.NEEDS_INTERVENTION),
        "c1": ("gamma", Status.CANCELLED),
    }
    created = {
        eid: store.create_execution(
            execution_id=eid, graph=graph, fingerprint="f", state={}, cursor=Cursor(), status=status
        )[0]
        for eid, (graph, status) in runs.items()
    }
    store.save(_commit(0, execution_id="a3", status=Status.SUCCEEDED))
    an_hour_ago = utcnow() - timedelta(hours=1)
    with backend.db.engine.begin() as conn:
        conn.execute(
            update(executions).where(executions.c.id == "a1").values(updated_at=an_hour_ago)
        )
    # When the gauges are read with a cutoff half an hour ago
    gauges = store.execution_gauges(stuck_before=utcnow() - timedelta(minutes=30))
    # Then every run is counted, and only the graphs with active runs are aged
    assert gauges.counts == {
        ("alpha", Status.RUNNING): 2,
        ("alpha", Status.SUCCEEDED): 1,
        ("beta", Status.COMPENSATING): 1,
        ("beta", Status.NEEDS_INTERVENTION): 1,
        ("gamma", Status.CANCELLED): 1,
    }
    assert gauges.active == {
        "alpha": ActiveRuns(oldest_update=an_hour_ago, stuck=1),
        "beta": ActiveRuns(oldest_update=created["b1"].updated_at, stuck=0),
    }


def test_a_committed_visit_is_refused_a_second_time(backend: Backend) -> None:
    store = backend.store
    _start(store)
    store.save(_commit(0, "a"))
    # When the same (kind, node, visit) is saved again from the current version
    with pytest.raises(DuplicateCheckpoint):
        store.save(_commit(1, "a", state={"n": 42}))
    # Then the execution did not move and the first checkpoint stands
    assert store.get_execution(EID).version == 1
    assert store.find(EID, "node", "a", 1).state == {"n": 1}  # type: ignore[union-attr]
    assert len(store.list(EID)) == 2


def test_a_stale_version_is_refused(backend: Backend) -> None:
    store = backend.store
    _start(store)
    store.save(_commit(0, "a"))
    with pytest.raises(VersionConflict):
        store.save(_commit(0, "b"))
    assert store.get_execution(EID).version == 1
    assert store.find(EID, "node", "b", 1) is None and len(store.list(EID)) == 2


# -- writes in flight: send() and result() -----------------------------------------------------


def test_a_sent_commit_is_what_result_returns(backend: Backend) -> None:
    store = backend.store
    _start(store)
    # When a commit is sent, then collected twice
    pending = store.send(_commit(0, "a", output={"ok": True}))
    checkpoint = pending.result()
    # Then it is stored, and the second call returns the same answer
    assert pending.result() is checkpoint
    assert store.load(EID, 1) == checkpoint
    assert store.get_execution(EID).version == 1


def test_a_sent_conflict_is_raised_by_result(backend: Backend) -> None:
    store = backend.store
    _start(store)
    store.save(_commit(0, "a"))
    pending = store.send(_commit(0, "b"))
    with pytest.raises(VersionConflict) as raised:
        pending.result()
    # It carries the execution as read, for the rebase; a second call raises it again
    assert raised.value.current == store.get_execution(EID)
    with pytest.raises(VersionConflict) as again:
        pending.result()
    assert again.value is raised.value
    # And the store is usable afterwards, on the same thread
    assert store.send(_commit(1, "b")).result().seq == 2
    assert [cp.node for cp in store.list(EID)] == ["", "a", "b"]


def test_a_sent_duplicate_is_raised_by_result(backend: Backend) -> None:
    store = backend.store
    _start(store)
    store.save(_commit(0, "a"))
    pending = store.send(_commit(1, "a", state={"n": 42}))
    with pytest.raises(DuplicateCheckpoint):
        pending.result()
    with pytest.raises(DuplicateCheckpoint):
        pending.result()
    assert store.find(EID, "node", "a", 1).state == {"n": 1}  # type: ignore[union-attr]
    assert store.send(_commit(1, "b")).result().seq == 2


def test_a_sent_commit_from_a_lost_lease_is_raised_by_result(backend: Backend) -> None:
    store = backend.store
    _start(store)
    backend.ledger.take_lease(EID, "node", "a", 1, "old", ttl=30)
    newer = backend.ledger.take_lease(EID, "node", "a", 1, "new", ttl=30)
    with pytest.raises(LeaseLost):
        store.send(_commit(0, "a", lease_token=newer - 1)).result()
    assert store.send(_commit(0, "a", lease_token=newer)).result().seq == 1


def test_a_sent_start_is_idempotent_on_its_id(backend: Backend) -> None:
    store = backend.store
    fields: dict[str, Any] = {"graph": "g", "fingerprint": "f", "cursor": Cursor()}
    pending = store.send_start(execution_id=EID, state={"n": 0}, **fields)
    record, created = pending.result()
    assert created and pending.result() == (record, True)
    again, created_again = store.send_start(execution_id=EID, state={"n": 9}, **fields).result()
    assert not created_again and again == record == store.get_execution(EID)


def test_concurrent_threads_commit_a_visit_once(backend: Backend) -> None:
    store, writers = backend.store, 8
    _start(store)
    barrier = threading.Barrier(writers)
    outcomes: list[Any] = [None] * writers

    def write(i: int) -> None:
        barrier.wait()
        try:
            store.save(_commit(0, "a", state={"writer": i}))
            outcomes[i] = "ok"
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert outcomes.count("ok") == 1, outcomes
    assert all(isinstance(o, REFUSED) for o in outcomes if o != "ok"), outcomes
    winner = outcomes.index("ok")
    assert [cp.state for cp in store.list(EID, kinds=["node"])] == [{"writer": winner}]
    assert store.get_execution(EID).version == 1


def _save_in_child(url: str, commit: Commit, barrier: Any, results: Any) -> None:
    """Runs in a spawned process: its own Database, one attempt at the contested save."""
    db = Database(url)
    store = CheckpointStore(db)
    store.get_execution(commit.execution_id)  # connect before the race starts
    barrier.wait()
    try:
        store.save(commit)
        results.put("ok")
    except Exception as exc:
        results.put(type(exc).__name__)
    finally:
        db.dispose()


def test_concurrent_processes_commit_a_visit_once(backend: Backend, database_url: str) -> None:
    _start(backend.store)
    ctx, writers = multiprocessing.get_context("spawn"), 4
    barrier, results = ctx.Barrier(writers), ctx.Queue()
    processes = [
        ctx.Process(
            target=_save_in_child,
            args=(database_url, _commit(0, "a", state={"writer": i}), barrier, results),
        )
        for i in range(writers)
    ]
    for process in processes:
        process.start()
    outcomes = sorted(results.get(timeout=45) for _ in processes)
    for process in processes:
        process.join(10)
    assert outcomes.count("ok") == 1, outcomes
    assert set(outcomes) - {"ok"} <= {"DuplicateCheckpoint", "VersionConflict"}, outcomes
    assert len(backend.store.list(EID, kinds=["node"])) == 1
    assert backend.store.get_execution(EID).version == 1


def test_a_changed_row_is_detected_on_read(backend: Backend) -> None:
    store = backend.store
    _start(store)
    store.save(_commit(0, "a"))
    store.save(_commit(1, "b"))
    with backend.db.engine.begin() as conn:
        conn.execute(
            text("UPDATE durable_checkpoints SET state = :s WHERE execution_id = :e AND seq = 2"),
            {"s": '{"n":1000}', "e": EID},
        )
    for read in (lambda: store.load(EID, 2), lambda: store.latest(EID), lambda: store.list(EID)):
        with pytest.raises(CheckpointCorrupted) as caught:
            read()
        assert (caught.value.execution_id, caught.value.seq) == (EID, 2)
        assert EID in str(caught.value) and "Checkpoint 2 " in str(caught.value)
    assert store.load(EID, 1).state == {"n": 1}  # the untouched row still reads


@pytest.mark.parametrize("field", ["state", "output", "meta"])
def test_only_json_is_stored(backend: Backend, field: str) -> None:
    store = backend.store
    _start(store)
    for bad in ({1, 2}, object(), float("nan")):
        commit = _commit(0, "a", **{field: {"bad": bad}})
        with pytest.raises(NotJSONSerializable):
            store.save(commit)
    assert store.get_execution(EID).version == 0
    assert [cp.seq for cp in store.list(EID)] == [0]


# -- node visits ----------------------------------------------------------------------------


def test_attempt_counts_survive_a_new_database(backend: Backend, database_url: str) -> None:
    _start(backend.store)
    for expected in (1, 2, 3):
        db = Database(database_url)  # a fresh process-like start each time
        try:
            attempts = VisitLedger(db).record_failure(
                EID, "node", "a", 1, {"attempt": expected}, None
            )
        finally:
            db.dispose()
        assert attempts == expected
    visit = backend.ledger.get(EID, "node", "a", 1)
    assert visit is not None and (visit.attempts, visit.last_error) == (3, {"attempt": 3})


def test_leases_fence_out_older_attempts(backend: Backend) -> None:
    store, ledger = backend.store, backend.ledger
    _start(store)
    old = ledger.take_lease(EID, "node", "a", 1, "worker-1", ttl=30)
    new = ledger.take_lease(EID, "node", "a", 1, "worker-2", ttl=30)
    assert new > old > 0
    assert ledger.renew_lease(EID, "node", "a", 1, old, ttl=30) is False
    assert ledger.renew_lease(EID, "node", "a", 1, new, ttl=30) is True
    # When the older attempt tries to commit, Then it is fenced out and writes nothing
    with pytest.raises(LeaseLost):
        store.save(_commit(0, "a", lease_token=old))
    assert store.get_execution(EID).version == 0 and store.find(EID, "node", "a", 1) is None
    assert store.save(_commit(0, "a", lease_token=new)).seq == 1


def test_lease_tokens_keep_growing_after_a_failure(backend: Backend) -> None:
    _start(backend.store)
    ledger = backend.ledger
    first = ledger.take_lease(EID, "node", "a", 1, "worker-1", ttl=30)
    ledger.record_failure(EID, "node", "a", 1, {"type": "Timeout"}, None)
    assert ledger.take_lease(EID, "node", "a", 1, "worker-2", ttl=30) > first


def test_claim_due_hands_out_each_retry_once(backend: Backend) -> None:
    store, ledger = backend.store, backend.ledger
    _start(store)
    now = utcnow()
    for node, delay in (("past-1", -5), ("past-2", -1), ("future", 60)):
        ledger.record_failure(EID, "node", node, 1, {}, now + timedelta(seconds=delay))
    claimed = ledger.claim_due(utcnow())
    assert [v.node for v in claimed] == ["past-1", "past-2"]
    assert ledger.claim_due(utcnow()) == []
    assert [v.node for v in ledger.claim_due(now + timedelta(seconds=120))] == ["future"]
    # And claimers racing each other never get the same retry
    for i in range(6):
        ledger.record_failure(EID, "node", f"r{i}", 1, {}, now - timedelta(seconds=1))
    barrier, got = threading.Barrier(3), list[str]()

    def claim() -> None:
        barrier.wait()
        got.extend(v.node for v in ledger.claim_due(utcnow(), limit=4))

    threads = [threading.Thread(target=claim) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(got) == [f"r{i}" for i in range(6)]


# -- performance shape ----------------------------------------------------------------------


def test_latest_walks_the_primary_key(backend: Backend) -> None:
    store = backend.store
    with backend.db.read() as conn:
        engine = conn.engine  # where latest()'s connection comes from
    for e in range(20):
        _start(store, f"exec-{e}")
        for v in range(3):
            store.save(_commit(v, "a", visit=v, execution_id=f"exec-{e}"))
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        captured.append((statement, params))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        assert store.latest("exec-7").seq == 3  # type: ignore[union-attr]
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    statement, params = captured[-1]  # the query latest() really sends
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE durable_checkpoints")
            conn.exec_driver_sql("SET enable_seqscan = off")
            plan = conn.exec_driver_sql("EXPLAIN " + statement, params).scalars().all()
            pk = "pk_durable_checkpoints"
        else:
            indexes = conn.exec_driver_sql("PRAGMA index_list(durable_checkpoints)").all()
            pk = next(row[1] for row in indexes if row[3] == "pk")
            plan = [r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)]
    text_plan = "\n".join(plan)
    assert pk in text_plan, text_plan
    assert "Sort" not in text_plan and "TEMP B-TREE" not in text_plan, text_plan


def test_a_waiter_returns_once_its_execution_ends(backend: Backend) -> None:
    _start(backend.store)
    with backend.store.waiter(EID) as waiter:
        backend.store.save(_commit(0, status=Status.SUCCEEDED))
        waiter.wait(0.5)  # PostgreSQL: already woken by the commit; SQLite: a pause
    assert backend.store.get_execution(EID).status == Status.SUCCEEDED


def test_the_listener_wakes_only_the_waiters_of_the_run_that_ended(pg_url: str) -> None:
    db = Database(pg_url)
    migrate.upgrade(db)
    store = CheckpointStore(db)
    _start(store)
    _start(store, "other")
    listener = Listener(make_url(pg_url))
    try:
        mine, theirs = listener.subscribe(EID), listener.subscribe("other")
        # Both were woken once when the connection was made (look again): start from clear.
        mine.event.clear()
        theirs.event.clear()
        store.save(_commit(0, status=Status.SUCCEEDED))
        assert mine.event.wait(10.0), "the final commit's notification did not arrive"
        assert not theirs.event.is_set()
        # The notification carries the row as committed: the waiter needs no read.
        assert mine.row is not None
        assert store.noticed(mine.row) == store.get_execution(EID)
    finally:
        listener.close()
        db.dispose()


def test_a_notified_row_is_verified_and_a_large_one_goes_as_its_id(pg_url: str) -> None:
    db = Database(pg_url)
    migrate.upgrade(db)
    store = CheckpointStore(db)
    _start(store)
    listener = Listener(make_url(pg_url))
    try:
        slot = listener.subscribe(EID)
        slot.event.clear()
        # Random text does not compress: the sealed state stays over NOTIFY's payload limit.
        large = {"n": 1, "blob": os.urandom(8000).hex()}
        store.save(_commit(0, status=Status.FAILED, state=large))
        assert slot.event.wait(10.0)
        assert slot.row is None  # over the limit: only the id came, the waiter reads the row
        slot.event.clear()
        store.save(_commit(1, status=Status.SUCCEEDED, node="b"))
        assert slot.event.wait(10.0) and slot.row is not None
        with pytest.raises(CheckpointCorrupted):  # the row as notified, its state changed
            store.noticed(slot.row | {"state": '{"n":999}'})
    finally:
        listener.close()
        db.dispose()


def test_a_notification_from_an_earlier_release_names_the_run_alone() -> None:
    assert read_notice("run-1") == ("run-1", None)
    assert read_notice("{not json") == ("{not json", None)
    assert read_notice('{"id": "run-1"}') == ("run-1", None)
