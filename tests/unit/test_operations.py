"""Control operations on a run: what each does, the audited checkpoint it appends, and every
refusal (which changes nothing: same version, same status, same history)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from pydantic import BaseModel

from celery_durable import (
    Context,
    Durable,
    Execution,
    ExecutionCancelled,
    ExecutionFailed,
    ExecutionNotFound,
    InvalidInput,
    InvalidTransition,
    RetryPolicy,
    Status,
)
from celery_durable.errors import CannotSkip, CheckpointNotFound
from celery_durable.model.records import utcnow
from celery_durable.testing import in_process_worker
from tests.waiting import wait_for

FAST = RetryPolicy(max_attempts=2, initial_delay=0.01, backoff=1, jitter=False)


class Flow(BaseModel):
    n: int = 0
    path: str = ""


def snapshot(run: Execution) -> tuple[int, Status, int, dict[str, Any]]:
    record = run.refresh()
    return record.version, record.status, len(run.history()), record.state


def refused(run: Execution, op: Callable[[], object], error: type[Exception]) -> Exception:
    """``op`` raises ``error`` and changes nothing."""
    before = snapshot(run)
    with pytest.raises(error) as raised:
        op()
    assert snapshot(run) == before
    return raised.value


def audited(run: Execution, op: str, by: str, reason: str | None, since: datetime) -> None:
    """The newest checkpoint says what was done, by whom, why, and when."""
    last = run.history()[-1]
    assert last.meta is not None
    assert (last.meta["op"], last.meta["by"], last.meta["reason"]) == (op, by, reason)
    assert since <= last.created_at <= utcnow()


def chain(durable: Durable, name: str, calls: list[str], **b_options: Any) -> Any:
    """a: n+1, b: n*10, c: n+5, each appending its name to ``path`` and ``calls``."""
    g = durable.graph(name, state=Flow)

    @g.node
    def a(s: Flow) -> dict[str, object]:
        calls.append("a")
        return {"n": s.n + 1, "path": s.path + "a"}

    @g.node(**b_options)
    def b(s: Flow, ctx: Context) -> dict[str, object]:
        calls.append("b")
        if s.n < 0:
            raise ConnectionError(f"b cannot take n={s.n}")
        return {"n": s.n * 10, "path": s.path + "b"}

    @g.node
    def c(s: Flow) -> dict[str, object]:
        calls.append("c")
        return {"n": s.n + 5, "path": s.path + "c"}

    g.entry(a)
    g.edge(a, b)
    g.edge(b, c)
    return g


def held_in_a(
    durable: Durable, name: str, calls: list[str]
) -> tuple[Any, threading.Event, threading.Event]:
    """a: n+1, b: n*10; a sets ``entered`` and runs until ``release`` is set."""
    g = durable.graph(name, state=Flow)
    entered, release = threading.Event(), threading.Event()

    @g.node
    def a(s: Flow) -> dict[str, object]:
        calls.append("a")
        entered.set()
        assert release.wait(5)
        return {"n": s.n + 1}

    @g.node
    def b(s: Flow) -> dict[str, object]:
        calls.append("b")
        return {"n": s.n * 10}

    g.entry(a)
    g.edge(a, b)
    return g, entered, release


# -- pause / resume ------------------------------------------------------------------------


def test_pause_lets_the_node_in_flight_commit_and_dispatches_nothing_until_resume(
    durable: Durable, worker
) -> None:
    calls: list[str] = []
    g, entered, release = held_in_a(durable, "pausable", calls)
    with worker():
        run = g.delay(n=1)
        assert entered.wait(5)
        since = utcnow()
        run.pause(by="ops", reason="maintenance")
        audited(run, "pause", "ops", "maintenance", since)
        release.set()
        wait_for(lambda: any(c.node == "a" for c in run.history()), 5.0, what="a's commit")
        time.sleep(0.3)  # time enough for b to run, were it dispatched
        assert calls == ["a"]
        assert run.status == Status.PAUSED
        assert run.record.cursor.frontier == [("b", 1)]
        assert run.state.n == 2
        refused(run, run.pause, InvalidTransition)
        since = utcnow()
        run.resume(by="ops", reason="done")
        audited(run, "resume", "ops", "done", since)
        final = run.wait(timeout=10)
    assert final.n == 20
    assert calls == ["a", "b"]
    assert [(c.kind, c.node) for c in run.history()] == [
        ("start", ""), ("manual", "pause"), ("node", "a"), ("manual", "resume"), ("node", "b"),
    ]  # fmt: skip


def test_resume_while_the_node_is_still_in_flight_runs_nothing_twice(
    durable: Durable, worker
) -> None:
    calls: list[str] = []
    g, entered, release = held_in_a(durable, "quick_resume", calls)
    with worker():
        run = g.delay(n=1)
        assert entered.wait(5)
        run.pause()
        run.resume()
        release.set()
        assert run.wait(timeout=10).n == 20
        time.sleep(0.3)
    assert calls == ["a", "b"]


def test_resume_and_pause_are_refused_on_a_succeeded_run(durable: Durable, worker) -> None:
    calls: list[str] = []
    g = chain(durable, "done_run", calls)
    with worker():
        run = g.delay(n=1)
        run.wait(timeout=10)
    error = refused(run, run.resume, InvalidTransition)
    assert isinstance(error, InvalidTransition)
    assert (error.op, error.status) == ("resume", Status.SUCCEEDED)
    refused(run, run.pause, InvalidTransition)


# -- cancel --------------------------------------------------------------------------------


def test_cancel_stops_the_run_and_drops_the_node_in_flight(durable: Durable, worker) -> None:
    g = durable.graph("cancellable", state=Flow)
    entered, release = threading.Event(), threading.Event()
    calls: list[str] = []

    @g.node
    def a(s: Flow) -> dict[str, object]:
        calls.append("a")
        entered.set()
        assert release.wait(5)
        return {"n": 1}

    @g.node
    def b(s: Flow) -> None:
        calls.append("b")

    g.entry(a)
    g.edge(a, b)
    with worker():
        run = g.delay()
        assert entered.wait(5)
        since = utcnow()
        run.cancel(by="ops", reason="customer left")
        audited(run, "cancel", "ops", "customer left", since)
        release.set()
        with pytest.raises(ExecutionCancelled) as cancelled:
            run.wait(timeout=5)
        time.sleep(0.3)  # a returns; its commit must be dropped, b never dispatched
    assert cancelled.value.error["message"] == "customer left"
    assert calls == ["a"]
    assert run.status == Status.CANCELLED
    assert run.state.n == 0
    assert [(c.kind, c.node) for c in run.history()] == [("start", ""), ("manual", "cancel")]
    for op in (run.cancel, run.pause, run.resume, run.retry):
        refused(run, op, InvalidTransition)


def test_cancel_is_refused_on_a_succeeded_run(durable: Durable, worker) -> None:
    g = chain(durable, "cancel_late", [])
    with worker():
        run = g.delay(n=1)
        run.wait(timeout=10)
    error = refused(run, run.cancel, InvalidTransition)
    assert "succeeded" in str(error)


# -- retry ---------------------------------------------------------------------------------


def test_retry_runs_a_failed_run_again_from_its_failure_point_with_fresh_attempts(
    durable: Durable, worker
) -> None:
    calls: list[str] = []
    attempts: list[int] = []
    broken = {"b": True}
    g = durable.graph("retryable", state=Flow)

    @g.node
    def a(s: Flow) -> dict[str, object]:
        calls.append("a")
        return {"n": s.n + 1}

    @g.node(retry=FAST)
    def b(s: Flow, ctx: Context) -> dict[str, object]:
        attempts.append(ctx.attempt)
        if broken["b"]:
            raise ConnectionError("payments down")
        return {"n": s.n * 10}

    g.entry(a)
    g.edge(a, b)
    with worker():
        run = g.delay(n=1)
        with pytest.raises(ExecutionFailed) as failed:
            run.wait(timeout=10)
        assert failed.value.node == "b"
        visit = durable.visits.get(run.id, "node", "b", 1)
        assert visit is not None and visit.attempts == 2
        broken["b"] = False
        since = utcnow()
        run.retry(by="ops", reason="payments back")
        audited(run, "retry", "ops", "payments back", since)
        assert run.wait(timeout=10).n == 20
    assert calls == ["a"]  # the node before the failure is not run again
    assert attempts == [1, 2, 1]  # fresh attempts after the operator's retry
    assert run.error is None
    assert [(c.kind, c.node, c.visit) for c in run.history()][-3:] == [
        ("failure", "b", 1), ("manual", "retry", 3), ("node", "b", 1),
    ]  # fmt: skip


def test_retry_is_refused_on_running_and_succeeded_runs(durable: Durable, worker) -> None:
    g = chain(durable, "retry_refused", [])
    run = g.delay(n=1)  # no worker yet: it stays running
    assert run.status == Status.RUNNING
    refused(run, run.retry, InvalidTransition)
    with worker():
        run.wait(timeout=10)
    refused(run, run.retry, InvalidTransition)


# -- restart_from / fork -------------------------------------------------------------------


def test_restart_from_a_checkpoint_reruns_what_follows_it_in_the_same_execution(
    durable: Durable, worker
) -> None:
    calls: list[str] = []
    g = chain(durable, "rewind", calls)
    with worker():
        run = g.delay(n=1)
        assert run.wait(timeout=10).n == 25
        before = run.history()
        after_a = before[1]
        assert (after_a.node, after_a.state["n"]) == ("a", 2)
        since = utcnow()
        run.restart_from(after_a, by="ops", reason="redo b")
        audited(run, "restart", "ops", "redo b", since)
        final = run.wait(timeout=10)
    assert (final.n, final.path) == (25, "abc")  # from a's state, not from the end state
    assert calls == ["a", "b", "c", "b", "c"]
    history = run.history()
    assert history[: len(before)] == before  # kept, and grown
    assert [(c.kind, c.node, c.visit) for c in history[len(before) :]] == [
        ("manual", "restart", 4), ("node", "b", 2), ("node", "c", 2),
    ]  # fmt: skip
    assert history[len(before)].meta["from_seq"] == 1
    assert run.status == Status.SUCCEEDED


def test_restart_from_is_refused_while_running_and_for_an_unknown_checkpoint(
    durable: Durable, worker
) -> None:
    g = chain(durable, "rewind_refused", [])
    run = g.delay(n=1)
    refused(run, lambda: run.restart_from(0), InvalidTransition)
    with worker():
        run.wait(timeout=10)
    refused(run, lambda: run.restart_from(99), CheckpointNotFound)


def test_fork_starts_a_new_execution_from_a_checkpoint_and_leaves_the_original_alone(
    durable: Durable, worker
) -> None:
    calls: list[str] = []
    g = chain(durable, "forkable", calls)
    with worker():
        run = g.delay(n=1)
        run.wait(timeout=10)
        before = snapshot(run)
        history = run.history()
        forked = run.fork(history[2], execution_id="forked-1", by="ops", reason="what if")
        final = forked.wait(timeout=10)
    assert forked.id == "forked-1" != run.id
    assert (final.n, final.path) == (25, "abc")  # b's state (20, "ab") then c
    assert calls == ["a", "b", "c", "c"]
    assert snapshot(run) == before
    assert run.history() == history
    start, *rest = forked.history()
    assert start.state == {"n": 20, "path": "ab"}
    assert start.meta is not None
    assert (start.meta["op"], start.meta["by"], start.meta["reason"]) == ("fork", "ops", "what if")
    assert (start.meta["from"], start.meta["from_seq"]) == (run.id, 2)
    assert [(c.kind, c.node, c.visit) for c in rest] == [("node", "c", 1)]


# -- skip ----------------------------------------------------------------------------------


def test_skip_marks_the_failed_node_done_with_its_output_and_the_run_goes_on(
    durable: Durable, worker
) -> None:
    calls: list[str] = []
    g = chain(durable, "skippable", calls, retry=RetryPolicy.never())
    with worker():
        run = g.delay(n=-2)  # a makes it -1: b refuses it
        with pytest.raises(ExecutionFailed):
            run.wait(timeout=10)
        refused(run, lambda: run.skip("a"), CannotSkip)
        refused(run, lambda: run.skip("c"), CannotSkip)
        refused(run, lambda: run.skip("b", output={"nope": 1}), InvalidInput)
        since = utcnow()
        run.skip("b", output={"n": 7, "path": "manual"}, by="ops", reason="done by hand")
        final = run.wait(timeout=10)
    assert (final.n, final.path) == (12, "manualc")
    assert calls == ["a", "b", "c"]
    skipped = next(c for c in run.history() if c.kind == "node" and c.node == "b")
    assert skipped.output == {"n": 7, "path": "manual"}
    assert skipped.meta is not None
    assert skipped.meta["skipped"] is True
    assert (skipped.meta["op"], skipped.meta["by"], skipped.meta["reason"]) == (
        "skip", "ops", "done by hand",
    )  # fmt: skip
    assert since <= skipped.created_at
    refused(run, lambda: run.skip("b"), CannotSkip)  # succeeded: nothing failed


# -- update_state --------------------------------------------------------------------------


def test_update_state_is_validated_audited_and_then_used_by_retry(durable: Durable, worker) -> None:
    calls: list[str] = []
    g = chain(durable, "patchable", calls, retry=RetryPolicy.never())
    with worker():
        run = g.delay(n=-2)
        with pytest.raises(ExecutionFailed):
            run.wait(timeout=10)
        refused(run, lambda: run.update_state({"nope": 1}), InvalidInput)
        refused(run, lambda: run.update_state({"n": "not a number"}), InvalidInput)
        since = utcnow()
        run.update_state({"n": 4}, by="ops", reason="fix input")
        audited(run, "patch", "ops", "fix input", since)
        assert run.history()[-1].output == {"n": 4}
        assert (run.status, run.state.n, run.state.path) == (Status.FAILED, 4, "a")
        run.retry()
        final = run.wait(timeout=10)
    assert (final.n, final.path) == (45, "abc")
    assert calls == ["a", "b", "b", "c"]
    refused(run, lambda: run.update_state({"n": 1}), InvalidTransition)


# -- audit and unknown ids -----------------------------------------------------------------


def test_an_operation_without_by_records_the_local_user_and_host(durable: Durable) -> None:
    g = chain(durable, "who", [])
    run = g.delay(n=1)
    run.pause()
    meta = run.history()[-1].meta
    assert meta is not None
    assert meta["op"] == "pause" and meta["reason"] is None
    assert "@" in meta["by"] and meta["by"].split("@")[0]


@pytest.mark.parametrize(
    "op",
    [
        "pause", "resume", "cancel", "retry",
        "restart_from", "fork", "skip", "update_state", "compensate", "get",
    ],
)  # fmt: skip
def test_operations_on_an_unknown_id_raise_execution_not_found(durable: Durable, op: str) -> None:
    missing = Execution(durable.runtime, "no-such-run")
    calls: dict[str, Callable[[], object]] = {
        "pause": missing.pause,
        "resume": missing.resume,
        "cancel": missing.cancel,
        "retry": missing.retry,
        "restart_from": lambda: missing.restart_from(0),
        "fork": lambda: missing.fork(0),
        "skip": lambda: missing.skip("a"),
        "update_state": lambda: missing.update_state({"n": 1}),
        "compensate": missing.compensate,
        "get": lambda: durable.get("no-such-run"),
    }
    with pytest.raises(ExecutionNotFound):
        calls[op]()
    assert durable.list() == []


def test_a_cancel_with_the_broker_down_commits_and_cancels_the_children(
    durable: Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Job(BaseModel):
        n: int = 0

    child = durable.graph("napping_child", state=Job)

    @child.node
    def nap(state: Job, ctx: Context) -> None:
        ctx.sleep(3600)

    child.entry(nap)
    parent = durable.graph("waiting_parent", state=Job)

    @parent.node
    def spawn(state: Job, ctx: Context) -> None:
        ctx.wait_child(ctx.start_child(child, {}))

    parent.entry(spawn)
    with in_process_worker(durable):
        run = parent.delay()
        wait_for(lambda: len(run.children()) == 1 and run.status == Status.WAITING, 5.0)
        wait_for(lambda: run.children()[0].status == Status.WAITING, 5.0)

    def broker_down(*args: object) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(durable.runtime.dispatcher, "revoke", broker_down)
    run.cancel(by="ops")
    assert run.status == Status.CANCELLED
    assert [c.status for c in run.children()] == [Status.CANCELLED]
