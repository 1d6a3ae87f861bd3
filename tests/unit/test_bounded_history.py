"""Bounded history: a graph with ``keep_checkpoints=N`` keeps its runs' newest N checkpoints
and its audit trail, deleting the rest as it goes, and a run that loops still recovers,
waits, starts children, verifies and travels in time. On SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import func, select

from celery_durable import Context, Durable, ExecutionFailed, Status
from celery_durable.engine.base import Base
from celery_durable.engine.compaction import MIN_KEEP_CHECKPOINTS, every
from celery_durable.engine.node_run import NodeRun
from celery_durable.errors import (
    CheckpointCompacted,
    CheckpointNotFound,
    GraphDefinitionError,
)
from celery_durable.faults import crash_at
from celery_durable.model.records import Kind
from celery_durable.persistence.schema import attempts, checkpoints, events, node_visits
from celery_durable.persistence.stream_rows import emits
from celery_durable.policies.retry import NonRetryable, RetryPolicy
from celery_durable.testing import (
    embedded_app,
    fast_forward,
    in_process_worker,
)
from tests.waiting import wait_for

KEEP = 10
TURNS = 60


class Loop(BaseModel):
    i: int = 0
    until: int = TURNS
    total: int = 0
    note: str = ""


Make = Callable[..., Durable]


@pytest.fixture
def make(database_url: str) -> Iterator[Make]:
    made: list[Durable] = []

    def build(**settings: Any) -> Durable:
        durable = Durable(embedded_app(f"hist-{uuid.uuid4().hex[:6]}"), database_url, **settings)
        durable.migrate()
        made.append(durable)
        return durable

    yield build
    for durable in made:
        durable.db.dispose()


def rows(durable: Durable, execution_id: str) -> dict[str, int]:
    """The run's rows in every table that grows with its history."""
    counted = {}
    with durable.db.read() as conn:
        for table in (checkpoints, node_visits, attempts, events, emits):
            query = select(func.count()).where(table.c.execution_id == execution_id)
            counted[table.name.removeprefix("durable_")] = int(conn.execute(query).scalar_one())
    return counted


def looping(durable: Durable) -> Any:
    """A graph whose runs keep KEEP checkpoints; its node goes in with ``loops_back``."""
    return durable.graph("loop", state=Loop, keep_checkpoints=KEEP)


def loops_back(g: Any, node: Any) -> None:
    """``node`` is the entry, and sends the run back to itself until ``i`` reaches ``until``."""
    g.entry(node)
    g.branch(node, lambda s: node.name if s.i < s.until else None, paths=[node.name])


def waits(run: Any, kind: str, i: int) -> None:
    """Until the run waits for ``kind`` in turn ``i``."""

    def found() -> bool:
        record = run.refresh()
        open_waits = [w.kind for w in record.cursor.waits.values()]
        return record.status == Status.WAITING and open_waits == [kind] and record.state["i"] == i

    wait_for(found, 10.0, what=f"a {kind} wait in turn {i}")


def test_a_loop_keeps_its_newest_checkpoints_and_verifies(make: Make) -> None:
    durable = make(eta_threshold=2.0)
    g = looping(durable)
    seen: list[int] = []

    @g.node(max_visits=TURNS + 1, retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
    def turn(s: Loop, ctx: Context) -> dict[str, int]:
        seen.append(rows(durable, ctx.execution_id)["checkpoints"])
        ctx.step("quote", lambda: s.i)
        ctx.emit({"i": s.i})
        if s.i == 7 and ctx.attempt == 1:
            raise RuntimeError("flaky")  # a failed attempt: a visit-ledger row, an attempt row
        return {"i": s.i + 1}

    loops_back(g, turn)
    with in_process_worker(durable):
        run = g.delay()
        assert run.wait(timeout=60).i == TURNS
    left = rows(durable, run.id)
    # The start, the newest KEEP, and the node commit the oldest of them (a step) stands on.
    assert left["checkpoints"] <= KEEP + 2, left
    kept = [cp.seq for cp in run.history()]
    assert kept[0] == 0 and kept[1:] == list(range(kept[1], kept[-1] + 1))
    assert kept[-1] == run.record.version and len(kept) - 1 >= KEEP
    # What went with the compacted visits: their failed attempts, ledger rows, emitted values.
    assert left["attempts"] == 0 and left["node_visits"] == 0 and left["emits"] <= KEEP
    # Bounded throughout: the start, the newest KEEP and the one before, the turns between
    # two compactions (a step and a node commit each), and a turn or two that ran on while a
    # compaction did (it follows its hand-on). Keeping all would be 2 * TURNS + 1.
    assert max(seen) <= 1 + KEEP + 1 + 2 * every(KEEP) + 2 * 2, max(seen)
    assert durable.verify() == []
    assert not any(cp.corrupted for cp in run.history())


def test_time_travel_reaches_what_is_kept_and_names_what_is_not(make: Make) -> None:
    durable = make()
    g = looping(durable)

    @g.node(max_visits=10 * TURNS)
    def turn(s: Loop, ctx: Context) -> dict[str, int]:
        ctx.step("quote", lambda: s.i)
        return {"i": s.i + 1}

    loops_back(g, turn)
    with in_process_worker(durable):
        run = g.delay()
        run.wait(timeout=60)
        # The commit that ends the run compacts after it lands, maybe after wait() returned.
        wait_for(lambda: rows(durable, run.id)["checkpoints"] <= KEEP + 2, 5.0)
        history = run.history()
        two_back = next(cp for cp in history if cp.kind == Kind.NODE and cp.state["i"] == TURNS - 2)
        step = next(cp for cp in history if cp.kind == Kind.STEP)
        with pytest.raises(CheckpointCompacted, match="keep_checkpoints") as gone:
            run.restart_from(5)
        assert isinstance(gone.value, CheckpointNotFound)
        with pytest.raises(CheckpointCompacted):
            run.fork(7)
        with pytest.raises(CheckpointNotFound) as never:
            run.restart_from(10**6)
        assert not isinstance(never.value, CheckpointCompacted)
        # A kept step stands on the node commit before it, which is kept with it.
        forked = run.fork(step.seq)
        assert forked.wait(timeout=60).i == TURNS
        run.restart_from(two_back.seq, by="ops", reason="again")
        assert run.wait(timeout=60).i == TURNS
        run.restart_from(0)  # the start is always kept
        assert run.wait(timeout=60).i == TURNS
    assert rows(durable, run.id)["checkpoints"] <= KEEP + 4  # + the two restarts' audit rows
    assert durable.verify() == []


def test_operations_audit_rows_and_waits_for_events_in_the_loop(make: Make) -> None:
    durable = make()
    g = looping(durable)
    turns = 30

    @g.node(max_visits=turns + 1)
    def listen(s: Loop, ctx: Context) -> dict[str, int]:
        got = ctx.wait_for_event("tick")
        return {"i": s.i + 1, "total": s.total + got}

    loops_back(g, listen)
    with in_process_worker(durable):
        run = g.delay(until=turns)
        for k in range(turns):
            waits(run, "event", k)
            if k == 3:
                run.pause(by="ops@shop", reason="look")
                run.update_state({"note": "checked"}, by="ops@shop", reason="fix")
                run.resume(by="ops@shop", reason="go")
            run.send_event("tick", k, idempotency_key=f"tick-{k}")
        final = run.wait(timeout=30)
    # Each event consumed once, however many wakes were compacted with theirs.
    assert (final.i, final.total, final.note) == (turns, sum(range(turns)), "checked")
    audit = [cp for cp in run.history() if cp.kind == Kind.MANUAL]
    assert [cp.meta["op"] for cp in audit] == ["pause", "patch", "resume"]
    assert {cp.meta["by"] for cp in audit} == {"ops@shop"}
    assert audit[0].seq < run.record.version - 3 * KEEP
    left = rows(durable, run.id)
    assert left["checkpoints"] <= KEEP + 2 + len(audit), left
    assert left["events"] <= KEEP, left  # consumed events go with their wakes
    assert durable.verify() == []


def test_every_approval_in_the_loop_is_kept(make: Make) -> None:
    durable = make()
    g = looping(durable)
    turns = 20

    @g.node(max_visits=turns + 1, interrupt_before=True)
    def approved(s: Loop) -> dict[str, int]:
        return {"i": s.i + 1}

    loops_back(g, approved)
    with in_process_worker(durable):
        run = g.delay(until=turns)
        for k in range(turns):
            waits(run, "interrupt", k)
            run.resume(by="ops@shop", reason=f"turn {k}")
        assert run.wait(timeout=30).i == turns
    history = run.history()
    approvals = [cp for cp in history if cp.kind == Kind.WAKE]
    assert [cp.meta["reason"] for cp in approvals] == [f"turn {k}" for k in range(turns)]
    assert sum(cp.kind == Kind.NODE for cp in history) <= KEEP
    assert durable.verify() == []


def test_a_visit_waiting_beside_the_loop_keeps_its_steps(make: Make) -> None:
    durable = make()
    g = looping(durable)
    labels: list[int] = []

    @g.node
    def split(s: Loop) -> None:
        return None

    @g.node
    def watch(s: Loop, ctx: Context) -> dict[str, str]:
        ctx.step("label", lambda: labels.append(1))
        return {"note": ctx.wait_for_event("stop")}

    @g.node(max_visits=TURNS + 1)
    def spin(s: Loop, ctx: Context) -> dict[str, int]:
        ctx.step("quote", lambda: s.i)
        return {"i": s.i + 1}

    g.entry(split)
    g.edge(split, [watch, spin])
    g.branch(spin, lambda s: "spin" if s.i < s.until else None, paths=["spin"])
    with in_process_worker(durable):
        run = g.delay()
        waits(run, "event", TURNS)  # the loop ran past the watch's step and wait
        progress = run.progress()  # split's checkpoint is compacted: it still counts as done
        assert (progress.done, progress.total, progress.current) == (2, 3, ["watch"])
        run.send_event("stop", "done")
        final = run.wait(timeout=30)
    assert (final.i, final.note, labels) == (TURNS, "done", [1])
    assert rows(durable, run.id)["checkpoints"] <= KEEP + 2
    assert durable.verify() == []


def test_a_sleep_inside_the_loop(make: Make) -> None:
    durable = make()
    g = looping(durable)
    turns = 25

    @g.node(max_visits=turns + 1)
    def nap(s: Loop, ctx: Context) -> dict[str, int]:
        ctx.sleep(600)
        return {"i": s.i + 1}

    loops_back(g, nap)
    with in_process_worker(durable):
        run = g.delay(until=turns)
        for k in range(turns):
            waits(run, "sleep", k)
            assert fast_forward(durable, 600).woken == 1
        assert run.wait(timeout=30).i == turns
    left = rows(durable, run.id)
    # A sleep's timer is a visit-ledger row: it goes with its wait.
    assert left["checkpoints"] <= KEEP + 2 and left["node_visits"] <= KEEP, left
    assert durable.verify() == []


def test_a_child_run_inside_the_loop(make: Make) -> None:
    durable = make()
    child = durable.graph("double", state=Loop)

    @child.node
    def double(s: Loop) -> dict[str, int]:
        return {"total": 2 * s.i}

    child.entry(double)
    g = looping(durable)
    turns = 15

    @g.node(max_visits=turns + 1)
    def delegate(s: Loop, ctx: Context) -> dict[str, int]:
        result = ctx.wait_child(ctx.start_child(child, {"i": s.i}))
        return {"i": s.i + 1, "total": s.total + result["total"]}

    loops_back(g, delegate)
    with in_process_worker(durable):
        run = g.delay(until=turns)
        assert run.wait(timeout=60).total == 2 * sum(range(turns))
    children = run.children()
    assert len(children) == turns and {c.status for c in children} == {Status.SUCCEEDED}
    assert rows(durable, run.id)["checkpoints"] <= KEEP + 2
    assert durable.verify() == []


def test_recovery_after_a_crash_mid_loop(make: Make) -> None:
    durable = make()
    g = looping(durable)
    arrived, gate = threading.Event(), threading.Event()
    calls: list[int] = []

    @g.node(max_visits=TURNS + 1)
    def turn(s: Loop, ctx: Context) -> dict[str, int]:
        if s.i == TURNS // 2:
            arrived.set()
            gate.wait(10)
        calls.append(s.i)
        ctx.step("quote", lambda: s.i)
        return {"i": s.i + 1}

    loops_back(g, turn)
    with in_process_worker(durable):
        run = g.delay()
        assert arrived.wait(10)
        with crash_at("after_commit", "turn") as crash:
            gate.set()
            assert crash.crashed.wait(10)
        wait_for(lambda: run.status == Status.RUNNING and calls[-1] == TURNS // 2, 5.0)
        assert fast_forward(durable, durable.settings.stale_after).redispatched == 1
        assert run.wait(timeout=60).i == TURNS
    assert calls == list(range(TURNS))  # committed before the crash: not run again
    assert rows(durable, run.id)["checkpoints"] <= KEEP + 2
    assert durable.verify() == []


def test_a_redelivered_message_replays_what_it_committed_however_much_that_was(
    make: Make,
) -> None:
    """A message ran two visits inline after its own, the last with a dozen steps (more than
    KEEP checkpoints after its own visit's), then its worker died before the ack: the
    redelivered copy still finds its visit's checkpoint and replays it, rather than
    stepping aside for the sweep."""
    durable = make()
    g = looping(durable)

    @g.node(max_visits=TURNS + 1)
    def turn(s: Loop, ctx: Context) -> dict[str, int]:
        if s.i == 19:
            ctx.wait_for_event("go")
        for k in range(KEEP + 2 if s.i == 21 else 1):
            ctx.step(f"quote-{k}", int, k)
        return {"i": s.i + 1}

    loops_back(g, turn)
    with in_process_worker(durable):
        run = g.delay()
        waits(run, "event", 19)
    run.send_event("go")  # its message waits in the queue: no worker runs it yet
    record = run.refresh()
    ((name, visit),) = record.cursor.frontier
    base = Base.of(record)
    first = NodeRun(durable.runtime, g.definition(), name, run.id, visit, base)
    chain: NodeRun | None = first
    while chain is not None:  # three visits, the last one compacts; then the worker dies
        assert chain.execute() == "committed"
        chain = chain.successor
    assert durable.store.find(run.id, Kind.NODE, name, visit + 2).output == {"i": 22}
    copy = NodeRun(durable.runtime, g.definition(), name, run.id, visit, base, redelivered=True)
    assert copy.execute() == "replayed"
    with in_process_worker(durable):
        assert run.wait(timeout=60).i == TURNS
    assert rows(durable, run.id)["checkpoints"] <= KEEP + 2
    assert durable.verify() == []


def test_a_saga_keeps_what_it_undoes(make: Make) -> None:
    durable = make()
    saga = durable.saga("trip", state=Loop, keep_checkpoints=KEEP)
    released: list[int] = []

    @saga.step
    def reserve(s: Loop) -> dict[str, int]:
        return {"total": 7}

    @reserve.compensation
    def release(s: Loop) -> None:
        released.append(s.total)

    @saga.step(max_visits=TURNS + 1)
    def poll(s: Loop, ctx: Context) -> dict[str, int]:
        ctx.step("look", lambda: s.i)
        if s.i == TURNS:
            raise NonRetryable("the supplier gave up")
        return {"i": s.i + 1, "total": s.total + 1}

    saga.branch(poll, lambda s: "poll", paths=["poll"])
    with in_process_worker(durable):
        run = saga.delay()
        with pytest.raises(ExecutionFailed):
            run.wait(timeout=60)
    assert run.status == Status.COMPENSATED
    assert released == [7]  # undone on the state its step committed, long compacted around
    kinds = [cp.kind for cp in run.history()]
    assert kinds.count(Kind.NODE) <= KEEP + 1 and Kind.COMPENSATION in kinds
    assert durable.verify() == []


def test_a_node_that_ran_while_its_sibling_looped_past_the_kept_history_still_clashes(
    make: Make,
) -> None:
    durable = make()
    g = durable.graph("race", state=Loop, keep_checkpoints=KEEP)
    passed = threading.Event()

    @g.node
    def split(s: Loop) -> None:
        return None

    @g.node(max_visits=TURNS + 1)
    def spin(s: Loop) -> dict[str, int]:
        if s.i == 3 * KEEP:
            passed.set()
        # ``total`` in its first turn only: the checkpoint that says so is compacted later.
        return {"i": s.i + 1, "total": 1} if s.i == 0 else {"i": s.i + 1}

    @g.node
    def slow(s: Loop) -> dict[str, int]:
        passed.wait(10)  # the checkpoints since this node read its state are compacted
        return {"total": 5}

    g.entry(split)
    g.edge(split, [spin, slow])
    g.branch(spin, lambda s: "spin" if s.i < s.until else None, paths=["spin"])
    with in_process_worker(durable, pool="threads", concurrency=2):
        run = g.delay()
        with pytest.raises(ExecutionFailed) as failed:
            run.wait(timeout=60)
    assert failed.value.error["type"] == "MergeConflict"
    assert "total" in failed.value.error["message"]


def test_the_option_is_checked_where_it_is_written(make: Make) -> None:
    durable = make()
    for wrong in (MIN_KEEP_CHECKPOINTS - 1, 0, True, "10", 2.5):
        with pytest.raises(GraphDefinitionError, match="keep_checkpoints"):
            durable.graph(f"g{uuid.uuid4().hex[:6]}", state=Loop, keep_checkpoints=wrong)
    durable.saga("fine", state=Loop, keep_checkpoints=MIN_KEEP_CHECKPOINTS)
    saga = durable.saga("undo-loop", state=Loop, keep_checkpoints=KEEP)

    @saga.step
    def book(s: Loop) -> None:
        return None

    @book.compensation
    def unbook(s: Loop) -> None:
        return None

    saga.branch(book, lambda s: "book", paths=["book"])
    with pytest.raises(GraphDefinitionError, match="'book'"):
        saga.validate()
