"""Graphs end to end on SQLite with an in-process worker: routing, fan-out/join, merges,
retries, timeouts, sub-steps, idempotent starts, and what bad input does (nothing)."""

from __future__ import annotations

import operator
import time
from contextlib import nullcontext
from datetime import datetime
from typing import Annotated

import pytest
from celery import Celery
from pydantic import BaseModel
from sqlalchemy import select

from celery_durable import (
    Context,
    Durable,
    ExecutionFailed,
    InvalidInput,
    Reduce,
    RetryPolicy,
    Status,
)
from celery_durable.errors import ExecutionIdInUse, StateTooLarge
from celery_durable.model.cursor import Cursor
from celery_durable.model.records import Commit, Kind
from celery_durable.persistence.schema import executions
from celery_durable.testing import in_process_worker


class Flow(BaseModel):
    n: int = 0
    path: str = ""
    items: Annotated[list[str], Reduce(operator.add)] = []
    left: int = 0
    right: int = 0


def test_linear_graph_commits_one_checkpoint_per_node(durable: Durable, worker) -> None:
    g = durable.graph("linear", state=Flow)

    @g.node
    def a(s: Flow) -> dict[str, object]:
        return {"n": s.n + 1, "path": s.path + "a"}

    @g.node
    def b(s: Flow, ctx: Context) -> dict[str, object]:
        return {"n": s.n * 10, "path": s.path + "b"}

    g.entry(a)
    g.edge(a, b)
    with worker():
        run = g.delay(n=1)
        final = run.wait(timeout=10)
    assert (final.n, final.path) == (20, "ab")
    history = run.history()
    assert [(c.kind, c.node, c.visit) for c in history] == [
        ("start", "", 0),
        ("node", "a", 1),
        ("node", "b", 1),
    ]
    assert [c.seq for c in history] == [0, 1, 2]
    assert history[1].output == {"n": 2, "path": "a"}
    assert run.status == Status.SUCCEEDED
    progress = run.progress()
    assert (progress.done, progress.total, progress.percent) == (2, 2, 100.0)


def test_fan_out_and_join_runs_the_join_once_and_merges(durable: Durable, worker) -> None:
    g = durable.graph("diamond", state=Flow)

    @g.node
    def start(s: Flow) -> None:
        return None

    @g.node
    def left(s: Flow) -> dict[str, object]:
        return {"left": 1, "items": ["left"]}

    @g.node
    def right(s: Flow) -> dict[str, object]:
        return {"right": 2, "items": ["right"]}

    @g.node
    def join(s: Flow) -> dict[str, object]:
        return {"n": s.left + s.right, "path": "+".join(sorted(s.items))}

    g.entry(start)
    g.edge(start, [left, right])
    g.edge([left, right], join)
    with worker():
        runs = [g.delay() for _ in range(5)]
        finals = [r.wait(timeout=20) for r in runs]
    for run, final in zip(runs, finals, strict=True):
        assert (final.n, final.path, sorted(final.items)) == (3, "left+right", ["left", "right"])
        joins = [c for c in run.history() if c.node == "join"]
        assert len(joins) == 1


def test_two_branches_writing_one_field_fail_the_merge(durable: Durable, worker) -> None:
    g = durable.graph("clash", state=Flow)

    @g.node
    def start(s: Flow) -> None:
        return None

    @g.node
    def one(s: Flow) -> dict[str, object]:
        return {"path": "one"}

    @g.node
    def two(s: Flow) -> dict[str, object]:
        return {"path": "two"}

    g.entry(start)
    g.edge(start, [one, two])
    with worker():
        run = g.delay()
        with pytest.raises(ExecutionFailed) as failed:
            run.wait(timeout=10)
    assert failed.value.error["type"] == "MergeConflict"
    assert "path" in failed.value.error["message"]


def test_branch_routes_on_state_and_unknown_target_fails_the_run(durable: Durable, worker) -> None:
    g = durable.graph("router", state=Flow)

    @g.node
    def decide(s: Flow) -> None:
        return None

    @g.node
    def big(s: Flow) -> dict[str, object]:
        return {"path": "big"}

    @g.node
    def small(s: Flow) -> dict[str, object]:
        return {"path": "small"}

    g.entry(decide)
    g.branch(decide, lambda s: {0: "small", 1: "big"}.get(s.n, "nowhere"), paths=[big, small])
    with worker():
        assert g.delay(n=1).wait(timeout=10).path == "big"
        assert g.delay(n=0).wait(timeout=10).path == "small"
        lost = g.delay(n=7)
        with pytest.raises(ExecutionFailed) as failed:
            lost.wait(timeout=10)
    assert "nowhere" in str(failed.value)
    assert lost.status == Status.FAILED


def test_retries_count_attempts_in_the_database_then_fail(durable: Durable, worker) -> None:
    g = durable.graph("flaky", state=Flow)
    seen: list[int] = []

    @g.node(retry=RetryPolicy(max_attempts=3, initial_delay=0.05, backoff=2, jitter=False))
    def wobbly(s: Flow, ctx: Context) -> dict[str, object]:
        seen.append(ctx.attempt)
        if s.n == 0 or ctx.attempt < 2:
            raise ConnectionError(f"attempt {ctx.attempt}")
        return {"path": f"ok after {ctx.attempt}"}

    g.entry(wobbly)
    with worker():
        assert g.delay(n=1).wait(timeout=10).path == "ok after 2"
        seen.clear()
        doomed = g.delay(n=0)
        with pytest.raises(ExecutionFailed) as failed:
            doomed.wait(timeout=10)
    assert seen == [1, 2, 3]
    assert failed.value.node == "wobbly"
    assert failed.value.error["message"] == "attempt 3"
    visit = durable.visits.get(doomed.id, "node", "wobbly", 1)
    assert visit is not None and visit.attempts == 3


def test_dont_retry_on_fails_at_once(durable: Durable, worker) -> None:
    g = durable.graph("strict", state=Flow)
    calls: list[int] = []

    @g.node(retry=RetryPolicy(max_attempts=5, initial_delay=0.01, dont_retry_on=(KeyError,)))
    def lookup(s: Flow) -> None:
        calls.append(1)
        raise KeyError("missing")

    g.entry(lookup)
    with worker(), pytest.raises(ExecutionFailed):
        g.delay().wait(timeout=10)
    assert len(calls) == 1


def test_timeout_fails_a_slow_node(durable: Durable, worker) -> None:
    g = durable.graph("slow", state=Flow)

    @g.node(timeout=0.05, retry=RetryPolicy.never())
    def crawl(s: Flow) -> None:
        time.sleep(0.2)

    g.entry(crawl)
    with worker(), pytest.raises(ExecutionFailed) as failed:
        g.delay().wait(timeout=10)
    assert failed.value.error["type"] == "NodeTimeout"


def test_steps_are_memoized_per_visit(durable: Durable, worker) -> None:
    g = durable.graph("steps", state=Flow)
    ran: list[int] = []

    @g.node(retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
    def loop(s: Flow, ctx: Context) -> dict[str, object]:
        total = 0
        for i in range(10):
            total += ctx.step(f"item-{i}", lambda i=i: ran.append(i) or i)
            if i == 6 and ctx.attempt == 1:
                raise RuntimeError("crash at item 6")
        return {"n": total}

    g.entry(loop)
    with worker():
        run = g.delay()
        assert run.wait(timeout=10).n == sum(range(10))
    assert ran == list(range(10))  # items 0..6 ran once, not again on the retry
    assert len([c for c in run.history() if c.kind == "step"]) == 10


def test_same_execution_id_starts_one_run(durable: Durable, worker) -> None:
    g = durable.graph("once", state=Flow)
    calls: list[int] = []

    @g.node
    def only(s: Flow) -> dict[str, object]:
        calls.append(1)
        return {"n": s.n + 1}

    g.entry(only)
    with worker():
        first = g.apply_async(kwargs={"n": 1}, execution_id="order-1")
        second = g.apply_async(kwargs={"n": 99}, execution_id="order-1")
        assert first.wait(timeout=10).n == 2
        assert second.wait(timeout=10).n == 2
    assert calls == [1]
    other = durable.graph("other", state=Flow)
    other.node(lambda s: None, name="x")
    other.entry("x")
    with pytest.raises(ExecutionIdInUse):
        other.apply_async(kwargs={}, execution_id="order-1")


def test_bad_input_raises_and_stores_nothing(durable: Durable) -> None:
    g = durable.graph("strict_input", state=Flow)
    g.node(lambda s: None, name="x")
    g.entry("x")
    with pytest.raises(InvalidInput, match="n"):
        g.delay(n="not a number")
    assert durable.list() == []


def test_oversized_state_is_refused_at_start_and_fails_a_node(app: Celery, sqlite_url: str) -> None:
    durable = Durable(app, database_url=sqlite_url, max_state_bytes=200)
    durable.migrate()
    g = durable.graph("big", state=Flow)

    @g.node(retry=RetryPolicy(max_attempts=3, initial_delay=0.01))
    def grow(s: Flow) -> dict[str, object]:
        return {"path": "x" * 500}

    g.entry(grow)
    with pytest.raises(StateTooLarge, match="over the limit of 200 bytes"):
        g.delay(path="y" * 500)
    assert durable.list() == []  # nothing stored or sent
    with in_process_worker(durable), pytest.raises(ExecutionFailed) as failed:
        g.delay().wait(timeout=10)
    assert failed.value.error["type"] == "StateTooLarge"
    assert failed.value.error["attempt"] == 1  # not retried: the output itself is too big
    durable.db.dispose()


def test_wait_takes_a_notified_end_only_if_newer_than_what_it_read(
    durable: Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's end notification carries the row, so wait() can return without reading it.
    An end heard late (the run failed, was retried, and runs again) must not end the wait."""
    g = durable.graph("noticed", state=Flow)
    g.node(lambda s: None, name="x")
    g.entry("x")
    run = g.delay()
    store = durable.store

    def commit(version: int, status: Status) -> None:
        store.save(
            Commit(
                execution_id=run.id, expected_version=version, kind=Kind.NODE, node="x",
                visit=version + 1, state={"n": version + 1}, cursor=Cursor(), status=status,
            )
        )  # fmt: skip

    def as_notified() -> dict[str, object]:
        with durable.db.read() as conn:
            row = conn.execute(select(executions).where(executions.c.id == run.id)).one()
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row._mapping.items()}

    commit(0, Status.FAILED)
    failed = as_notified()
    commit(1, Status.RUNNING)  # retried: running again at version 2
    heard: list[dict[str, object] | None] = [failed]

    class LateWaiter:
        first_pause = max_pause = 0.01

        def wait(self, timeout: float) -> dict[str, object] | None:
            if heard:
                return heard.pop()  # the old end, heard after the retry
            commit(2, Status.SUCCEEDED)
            heard.append(as_notified())
            return None

        def close(self) -> None:
            """Nothing held."""

    monkeypatch.setattr(store, "waiter", lambda _id: nullcontext(LateWaiter()))
    assert run.wait(timeout=5).n == 3  # not ExecutionFailed from the late notice
    assert store.noticed(failed).status == Status.FAILED  # the notice itself was genuine
