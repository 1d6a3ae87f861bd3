"""Child runs, embedded (SQLite, in-process worker): started once, waited for without holding
a worker, results in input order, failures named, cancel and compensation passed down."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import BaseModel

from celery_durable import (
    ChildFailed,
    Compensated,
    Context,
    Durable,
    ExecutionFailed,
    NonRetryable,
    RetryPolicy,
    Status,
)
from tests.waiting import wait_for, waiting_kind

ONCE = RetryPolicy.never()


class Job(BaseModel):
    n: int = 0
    fail: bool = False
    sleep: float = 0.0
    results: list[int] = []
    note: str = ""


@pytest.fixture
def double(durable: Durable):  # type: ignore[no-untyped-def]
    """The child graph: doubles n, fails when asked, sleeps durably when asked."""
    ran: Counter[int] = Counter()
    g = durable.graph("double", state=Job)

    @g.node(retry=ONCE)
    def work(state: Job, ctx: Context) -> dict[str, int]:
        ran[state.n] += 1
        if state.sleep:
            ctx.sleep(state.sleep)
        if state.fail:
            raise NonRetryable(f"cannot double {state.n}")
        return {"n": state.n * 2}

    g.entry(work)
    g.ran = ran  # type: ignore[attr-defined]
    return g


def test_a_child_is_started_once_and_its_state_returned(durable: Durable, double, worker) -> None:
    parent_runs: list[str] = []
    g = durable.graph("parent", state=Job)

    @g.node
    def delegate(state: Job, ctx: Context) -> dict[str, object]:
        parent_runs.append("delegate")
        child = ctx.start_child(double, {"n": state.n})
        return {"results": [ctx.wait_child(child)["n"]]}

    g.entry(delegate)
    with worker():
        run = g.delay(n=21)
        assert run.wait(timeout=10).results == [42]
    (child,) = run.children()
    assert child.id == f"{run.id}.delegate.1.c0" and child.record.parent_id == run.id
    assert double.ran == {21: 1}  # the parent ran twice (before and after waiting), the child once
    assert parent_runs == ["delegate", "delegate"]
    assert durable.list(parent=run.id)[0].id == child.id
    assert "children 1/1" in str(run.progress())


def test_a_failed_child_raises_child_failed_naming_it(durable: Durable, double, worker) -> None:
    g = durable.graph("careful", state=Job)

    @g.node(retry=ONCE)
    def try_it(state: Job, ctx: Context) -> dict[str, str]:
        try:
            ctx.wait_child(ctx.start_child(double, {"n": 1, "fail": True}, key="risky"))
        except ChildFailed as exc:
            return {"note": f"{exc.child_id} {exc.status}"}
        return {"note": "no"}

    g.entry(try_it)
    strict = durable.graph("strict_parent", state=Job)

    @strict.node(retry=ONCE)
    def insist(state: Job, ctx: Context) -> None:
        ctx.wait_child(ctx.start_child(double, {"n": 2, "fail": True}))

    strict.entry(insist)
    with worker():
        caught = g.delay()
        assert caught.wait(timeout=10).note == f"{caught.id}.try_it.1.risky failed"
        failing = strict.delay()
        with pytest.raises(ExecutionFailed) as failed:
            failing.wait(timeout=10)
    assert failed.value.error["type"] == "ChildFailed"
    assert f"{failing.id}.insist.1.c0" in failed.value.error["message"]


def test_map_returns_results_in_input_order(durable: Durable, double, worker) -> None:
    g = durable.graph("fan", state=Job)

    @g.node
    def fan_out(state: Job, ctx: Context) -> dict[str, object]:
        return {"results": [s["n"] for s in ctx.map(double, [{"n": i} for i in range(50)])]}

    g.entry(fan_out)
    with worker():
        run = g.delay()
        assert run.wait(timeout=30).results == [2 * i for i in range(50)]
    assert double.ran == {i: 1 for i in range(50)}
    assert [c.id.rsplit(".", 1)[1] for c in run.children()] == [f"{i:06d}" for i in range(50)]


def test_cancelling_a_parent_cancels_its_running_children(durable: Durable, double, worker) -> None:
    g = durable.graph("boss", state=Job)

    @g.node
    def wait_long(state: Job, ctx: Context) -> None:
        ctx.wait_child(ctx.start_child(double, {"n": 1, "sleep": 3600}))

    g.entry(wait_long)
    with worker():
        run = g.delay()
        wait_for(lambda: waiting_kind(run) == "child", 5.0)
        (child,) = run.children()
        wait_for(lambda: child.status == Status.WAITING, 5.0)
        run.cancel(reason="order withdrawn")
    assert run.status == Status.CANCELLED and child.status == Status.CANCELLED
    assert child.error["message"] == f"its parent {run.id} was cancelled"


def test_compensating_a_parent_saga_compensates_its_child_saga(durable: Durable, worker) -> None:
    undone: list[str] = []
    leg = durable.saga("leg", state=Job)

    @leg.step
    def book_leg(state: Job) -> None:
        return None

    @book_leg.compensation
    def cancel_leg(state: Job) -> None:
        undone.append("leg")

    trip = durable.saga("trip", state=Job)

    @trip.step
    def book(state: Job, ctx: Context) -> None:
        ctx.wait_child(ctx.start_child(leg, {"n": 1}))

    @book.compensation
    def unbook(state: Job) -> None:
        undone.append("trip")

    @trip.step(retry=ONCE)
    def pay(state: Job) -> None:
        raise NonRetryable("card declined")

    with worker():
        run = trip.delay()
        with pytest.raises(Compensated):
            run.wait(timeout=10)
        (child,) = run.children()
        with pytest.raises(Compensated):
            child.wait(timeout=10)
    assert sorted(undone) == ["leg", "trip"]
