"""The shared rows behind flow control, once on SQLite and once on PostgreSQL: one probe
however many workers ask at once, rate turns spaced exactly, slots first come first served
and freed when their holder dies."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest

from celery_durable.engine.flow_control import FlowControl
from celery_durable.model.cursor import Cursor
from celery_durable.model.records import BreakerRow, BreakerState, Kind, utcnow
from celery_durable.persistence import migrate
from celery_durable.persistence.database import Database
from celery_durable.persistence.flow_rows import FlowStore
from celery_durable.persistence.slot_table import Holder, SlotTable
from celery_durable.persistence.store import CheckpointStore
from celery_durable.persistence.visits import VisitLedger
from celery_durable.policies.breakers import BreakerPolicy

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    migrate.upgrade(database)
    yield database
    database.dispose()


def test_one_probe_however_many_ask_at_once(db: Database) -> None:
    flow = FlowControl(FlowStore(db), SlotTable(db), probe_ttl=30)
    flow.declare(BreakerPolicy("b", failure_threshold=1, reset_after=0.01))
    db_store = FlowStore(db)
    db_store.set_breaker("b", BreakerRow(BreakerState.OPEN, 1, opened_at=utcnow()), "test")
    threading.Event().wait(0.05)
    probes: list[bool] = []
    lock = threading.Lock()

    def ask() -> None:
        admission = flow.admit("b")
        with lock:
            probes.append(admission.allowed)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert probes.count(True) == 1
    status = flow.breakers()[0]
    assert status.row.state == BreakerState.HALF_OPEN and status.rejections == 7


def test_rate_turns_are_spaced_by_the_interval(db: Database) -> None:
    store = FlowStore(db)
    now = utcnow()
    turns = [store.reserve("api", timedelta(seconds=0.1), now) for _ in range(5)]
    assert [round((t - now).total_seconds(), 3) for t in turns] == [0, 0.1, 0.2, 0.3, 0.4]


def _run(db: Database, execution_id: str) -> None:
    CheckpointStore(db).create_execution(
        execution_id=execution_id, graph="g", fingerprint="f" * 64, state={}, cursor=Cursor()
    )


def test_slots_go_to_the_first_in_line(db: Database) -> None:
    table = SlotTable(db)
    holders = [Holder("node g.n", "k", f"e{i}", "n", 1) for i in range(4)]
    assert table.take(holders[0], 1, ttl=30)
    assert not table.take(holders[2], 1, ttl=30)  # e2 queues first
    assert not table.take(holders[1], 1, ttl=30)
    assert table.take(holders[0], 1, ttl=30)  # a redelivery of the holder keeps its place
    granted = table.leave(holders[0], 1, ttl=30)
    assert [h.execution_id for h in granted] == ["e2"]
    assert not table.take(holders[3], 1, ttl=30)  # no overtaking: e1 waits before it
    assert table.take(holders[2], 1, ttl=30)  # e2 holds what it was handed
    assert [h.execution_id for h in table.leave(holders[2], 1, ttl=30)] == ["e1"]


def test_a_dead_holder_frees_its_slot_when_slot_and_lease_expire(db: Database) -> None:
    table, ledger = SlotTable(db), VisitLedger(db)
    for eid in ("dead", "alive", "next"):
        _run(db, eid)
    dead = Holder("node g.n", "k", "dead", "n", 1)
    alive = Holder("node g.n", "k2", "alive", "n", 1)
    assert table.take(dead, 1, ttl=1) and table.take(alive, 1, ttl=1)
    assert not table.take(Holder("node g.n", "k", "next", "n", 1), 1, ttl=1)
    ledger.take_lease("alive", Kind.NODE, "n", 1, owner="w", ttl=60)  # still running
    limits: dict[str, tuple[int, float | None]] = {"node g.n": (1, 1.0)}
    assert table.reap(utcnow(), limits) == []
    later = utcnow() + timedelta(seconds=2)
    assert [h.execution_id for h in table.reap(later, limits)] == ["next"]
    held, _ = table.holders("alive")
    assert held == [alive]
