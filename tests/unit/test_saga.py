"""Sagas: compensations newest first, once per completed step, on the state their step
committed; retried per their policy; a stuck one waits for an operator (retry or skip);
compensate() on request; fan-out undone in reverse completion order; retry delays in bounds."""

from __future__ import annotations

import logging
import threading
import time
from itertools import pairwise
from typing import Any

import pytest
from pydantic import BaseModel

from celery_durable import (
    Compensated,
    Context,
    Durable,
    Execution,
    InvalidTransition,
    NeedsIntervention,
    RetryPolicy,
    Status,
    intervention_required,
)
from celery_durable.errors import CannotSkip, NothingToCompensate

ONCE = RetryPolicy.never()


class Order(BaseModel):
    order_id: str = "o-1"
    reserved: bool = False
    charged: bool = False
    shipped: bool = False
    left: int = 0
    right: int = 0


def snapshot(run: Execution) -> tuple[int, Status, int]:
    record = run.refresh()
    return record.version, record.status, len(run.history())


def order_saga(
    durable: Durable,
    name: str,
    undone: list[tuple[str, dict[str, Any], str]],
    keys: dict[str, str],
    *,
    fail_ship: bool = True,
    charge_undo: Any = None,
    compensation_retry: RetryPolicy | None = None,
) -> Any:
    """reserve → charge → ship; each step and each undo records what it saw."""
    s = durable.saga(name, state=Order)

    def undo(step: str):
        def compensate(state: Order, ctx: Context) -> None:
            undone.append((step, state.model_dump(), ctx.idempotency_key))

        return compensate

    @s.step(retry=ONCE, compensate=undo("reserve"))
    def reserve(state: Order, ctx: Context) -> dict[str, object]:
        keys["reserve"] = ctx.idempotency_key
        return {"reserved": True}

    @s.step(retry=ONCE)
    def charge(state: Order, ctx: Context) -> dict[str, object]:
        keys["charge"] = ctx.idempotency_key
        return {"charged": True}

    charge.compensation(charge_undo or undo("charge"), retry=compensation_retry)

    @s.step(retry=ONCE, compensate=undo("ship"))
    def ship(state: Order) -> dict[str, object]:
        if fail_ship:
            raise RuntimeError("no courier")
        return {"shipped": True}

    return s


def test_a_failed_step_undoes_completed_steps_newest_first_on_their_committed_state(
    durable: Durable, worker
) -> None:
    undone: list[tuple[str, dict[str, Any], str]] = []
    keys: dict[str, str] = {}
    s = order_saga(durable, "order", undone, keys)
    with worker():
        run = s.delay(order_id="o-7")
        with pytest.raises(Compensated) as compensated:
            run.wait(timeout=10)
    assert [step for step, _, _ in undone] == ["charge", "reserve"]  # ship's own undo: never
    by_step = {step: (state, key) for step, state, key in undone}
    assert by_step["charge"][0] == Order(order_id="o-7", reserved=True, charged=True).model_dump()
    assert by_step["reserve"][0] == Order(order_id="o-7", reserved=True).model_dump()
    for step in ("charge", "reserve"):
        assert by_step[step][1] != keys[step]
        assert by_step[step][1].startswith(run.id)
    assert run.status == Status.COMPENSATED
    assert compensated.value.node == "ship"
    assert run.error is not None
    assert (run.error["type"], run.error["message"], run.error["node"]) == (
        "RuntimeError", "no courier", "ship",
    )  # fmt: skip
    assert [(c.kind, c.node) for c in run.history()] == [
        ("start", ""), ("node", "reserve"), ("node", "charge"), ("failure", "ship"),
        ("compensation", "charge"), ("compensation", "reserve"),
    ]  # fmt: skip


def test_a_failing_compensation_is_retried_per_its_policy_and_attempts_are_counted(
    durable: Durable, worker
) -> None:
    undone: list[tuple[str, dict[str, Any], str]] = []
    attempts: list[tuple[int, float]] = []

    def flaky_refund(state: Order, ctx: Context) -> None:
        attempts.append((ctx.attempt, time.monotonic()))
        if ctx.attempt < 3:
            raise ConnectionError(f"refund attempt {ctx.attempt}")

    policy = RetryPolicy(max_attempts=3, initial_delay=0.05, backoff=2, jitter=False)
    s = order_saga(
        durable, "refund", undone, {}, charge_undo=flaky_refund, compensation_retry=policy
    )
    with worker():
        run = s.delay()
        with pytest.raises(Compensated):
            run.wait(timeout=10)
    assert [a for a, _ in attempts] == [1, 2, 3]
    gaps = [later - earlier for (_, earlier), (_, later) in pairwise(attempts)]
    assert gaps[0] >= 0.05 - 0.02 and gaps[1] >= 0.1 - 0.02
    visit = durable.visits.get(run.id, "compensation", "charge", 1)
    assert visit is not None and visit.attempts == 2  # two failures counted in the database
    assert [step for step, _, _ in undone] == ["reserve"]
    charge_undo = [c for c in run.history() if c.kind == "compensation" and c.node == "charge"]
    assert len(charge_undo) == 1 and charge_undo[0].meta["attempt"] == 3


def test_a_compensation_failing_for_good_needs_intervention_until_retried(
    durable: Durable, worker, caplog: pytest.LogCaptureFixture
) -> None:
    undone: list[tuple[str, dict[str, Any], str]] = []
    broken = {"refund": True}
    tries: list[int] = []

    def refund(state: Order, ctx: Context) -> None:
        tries.append(ctx.attempt)
        if broken["refund"]:
            raise ConnectionError("bank down")
        undone.append(("charge", state.model_dump(), ctx.idempotency_key))

    policy = RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=False)
    s = order_saga(durable, "stuck", undone, {}, charge_undo=refund, compensation_retry=policy)
    signals: list[dict[str, Any]] = []

    def on_intervention(sender: Any = None, **kwargs: Any) -> None:
        signals.append(kwargs)

    intervention_required.connect(on_intervention, weak=False)
    try:
        with caplog.at_level(logging.ERROR, logger="celery_durable"), worker():
            run = s.delay()
            with pytest.raises(NeedsIntervention) as stuck:
                run.wait(timeout=10)
            assert run.status == Status.NEEDS_INTERVENTION
            assert undone == []  # reserve waits behind the stuck undo of charge
            broken["refund"] = False
            run.retry(by="ops", reason="bank back")
            with pytest.raises(Compensated):
                run.wait(timeout=10)
    finally:
        intervention_required.disconnect(on_intervention)
    assert stuck.value.node == "charge"
    assert len(signals) == 1
    assert signals[0]["execution_id"] == run.id and signals[0]["step"] == "charge"
    assert signals[0]["error"]["message"] == "bank down"
    assert signals[0]["error"]["original"]["message"] == "no courier"
    # The engine's own line (Celery also logs the failed task, with its traceback, for Flower).
    errors = [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR
        and r.name.startswith("celery_durable")
        and run.id in r.getMessage()
    ]
    assert len(errors) == 1 and "charge" in errors[0].getMessage()
    assert tries == [1, 2, 1]  # the operator's retry starts with fresh attempts
    assert [step for step, _, _ in undone] == ["charge", "reserve"]
    assert run.status == Status.COMPENSATED
    assert run.error is not None and run.error["message"] == "no courier"  # the original again
    kinds = [(c.kind, c.node) for c in run.history()]
    assert kinds[-4:] == [
        ("intervention", "charge"), ("manual", "retry"), ("compensation", "charge"),
        ("compensation", "reserve"),
    ]  # fmt: skip


def test_skip_marks_the_stuck_compensation_done_and_the_rest_continue(
    durable: Durable, worker
) -> None:
    undone: list[tuple[str, dict[str, Any], str]] = []

    def refund(state: Order) -> None:
        raise ConnectionError("bank gone")

    policy = RetryPolicy(max_attempts=1, initial_delay=0.01)
    s = order_saga(durable, "skip_undo", undone, {}, charge_undo=refund, compensation_retry=policy)
    with worker():
        run = s.delay()
        with pytest.raises(NeedsIntervention):
            run.wait(timeout=10)
        before = snapshot(run)
        with pytest.raises(CannotSkip):
            run.skip("reserve")  # the one waiting is charge's
        assert snapshot(run) == before
        run.skip("charge", by="ops", reason="refunded by hand")
        with pytest.raises(Compensated):
            run.wait(timeout=10)
    assert [step for step, _, _ in undone] == ["reserve"]
    skipped = [c for c in run.history() if c.kind == "compensation" and c.node == "charge"]
    assert len(skipped) == 1
    assert skipped[0].meta is not None
    assert skipped[0].meta["skipped"] is True
    assert (skipped[0].meta["op"], skipped[0].meta["by"]) == ("skip", "ops")
    assert skipped[0].meta["reason"] == "refunded by hand"
    assert run.error is not None and run.error["message"] == "no courier"


# -- compensate() on request ---------------------------------------------------------------


def test_compensate_undoes_a_succeeded_saga_newest_first_and_records_the_reason(
    durable: Durable, worker
) -> None:
    undone: list[tuple[str, dict[str, Any], str]] = []
    s = order_saga(durable, "refunded", undone, {}, fail_ship=False)
    with worker():
        run = s.delay()
        assert run.wait(timeout=10).shipped
        run.compensate("customer returned it", by="support")
        with pytest.raises(Compensated) as compensated:
            run.wait(timeout=10)
    assert [step for step, _, _ in undone] == ["ship", "charge", "reserve"]
    assert compensated.value.error["type"] == "CompensationRequested"
    assert compensated.value.error["message"] == "customer returned it"
    request = next(c for c in run.history() if c.kind == "manual")
    assert request.meta is not None
    assert (request.meta["op"], request.meta["by"], request.meta["reason"]) == (
        "compensate", "support", "customer returned it",
    )  # fmt: skip
    assert [c.node for c in run.history() if c.kind == "compensation"] == [
        "ship", "charge", "reserve",
    ]  # fmt: skip
    before = snapshot(run)
    run.compensate("again")  # already compensated: nothing to do, nothing recorded
    assert snapshot(run) == before
    assert len(undone) == 3


def test_compensate_a_running_saga_undoes_the_step_in_flight_first(
    durable: Durable, worker
) -> None:
    s = durable.saga("midway", state=Order)
    entered, release = threading.Event(), threading.Event()
    ran: list[str] = []
    undone: list[str] = []

    @s.step(compensate=lambda state: undone.append("reserve"))
    def reserve(state: Order) -> dict[str, object]:
        ran.append("reserve")
        return {"reserved": True}

    @s.step(compensate=lambda state: undone.append("charge"))
    def charge(state: Order) -> dict[str, object]:
        ran.append("charge")
        entered.set()
        assert release.wait(5)
        return {"charged": True}

    @s.step(compensate=lambda state: undone.append("ship"))
    def ship(state: Order) -> dict[str, object]:
        ran.append("ship")
        return {"shipped": True}

    with worker():
        run = s.delay()
        assert entered.wait(5)
        run.compensate("fraud suspected")
        assert run.status == Status.COMPENSATING
        release.set()
        with pytest.raises(Compensated):
            run.wait(timeout=10)
    assert ran == ["reserve", "charge"]  # ship is never dispatched
    assert undone == ["charge", "reserve"]  # charge committed while compensating: undone too
    assert run.error is not None and run.error["message"] == "fraud suspected"


def test_compensate_a_paused_saga_still_undoes_the_step_in_flight(durable: Durable, worker) -> None:
    s = durable.saga("paused_undo", state=Order)
    entered, release = threading.Event(), threading.Event()
    undone: list[str] = []

    @s.step(compensate=lambda state: undone.append("reserve"))
    def reserve(state: Order) -> dict[str, object]:
        return {"reserved": True}

    @s.step(compensate=lambda state: undone.append("charge"))
    def charge(state: Order) -> dict[str, object]:
        entered.set()
        assert release.wait(5)
        return {"charged": True}  # the card was charged

    with worker():
        run = s.delay()
        assert entered.wait(5)
        run.pause()
        run.compensate("fraud suspected")
        release.set()
        with pytest.raises(Compensated):
            run.wait(timeout=10)
        time.sleep(0.2)
    assert undone == ["charge", "reserve"]


def test_compensate_a_failed_plain_graph_keeps_its_error(durable: Durable, worker) -> None:
    g = durable.graph("plain_undo", state=Order)
    undone: list[str] = []

    @g.node(compensate=lambda state: undone.append("reserve"))
    def reserve(state: Order) -> dict[str, object]:
        return {"reserved": True}

    @g.node(retry=ONCE, compensate=lambda state: undone.append("charge"))
    def charge(state: Order) -> None:
        raise RuntimeError("card declined")

    g.entry(reserve)
    g.edge(reserve, charge)
    with worker():
        run = g.delay()
        with pytest.raises(Exception, match="card declined"):
            run.wait(timeout=10)
        assert run.status == Status.FAILED  # on_failure="fail": nothing undone by itself
        assert undone == []
        run.compensate("give up")
        with pytest.raises(Compensated) as compensated:
            run.wait(timeout=10)
    assert undone == ["reserve"]
    assert compensated.value.error["message"] == "card declined"


def test_compensate_is_refused_on_a_cancelled_saga_and_on_a_graph_without_undo(
    durable: Durable, worker
) -> None:
    s = order_saga(durable, "cancelled_saga", [], {}, fail_ship=False)
    g = durable.graph("no_undo", state=Order)
    g.node(lambda state: {"reserved": True}, name="reserve")
    g.entry("reserve")
    cancelled = s.delay()
    cancelled.cancel()
    before = snapshot(cancelled)
    with pytest.raises(InvalidTransition):
        cancelled.compensate("too late")
    assert snapshot(cancelled) == before
    with worker():
        plain = g.delay()
        plain.wait(timeout=10)
    before = snapshot(plain)
    with pytest.raises(NothingToCompensate):
        plain.compensate("nothing")
    assert snapshot(plain) == before


# -- fan-out -------------------------------------------------------------------------------


def test_a_compensating_graph_undoes_fan_out_branches_in_reverse_completion_order(
    durable: Durable, worker
) -> None:
    g = durable.graph("fan", state=Order, on_failure="compensate")
    committed: list[str] = []
    undone: list[str] = []

    @g.node(compensate=lambda state: undone.append("start"))
    def start(state: Order) -> None:
        committed.append("start")

    # left is declared (and dispatched) first, but completes after right.
    @g.node(
        retry=RetryPolicy(max_attempts=50, initial_delay=0.01, backoff=1, jitter=False),
        compensate=lambda state: undone.append("left"),
    )
    def left(state: Order) -> dict[str, object]:
        if "right" not in committed:
            raise RuntimeError("wait for right")
        committed.append("left")
        return {"left": 1}

    @g.node(compensate=lambda state: undone.append("right"))
    def right(state: Order) -> dict[str, object]:
        committed.append("right")
        return {"right": 1}

    @g.node(retry=ONCE, compensate=lambda state: undone.append("join"))
    def join(state: Order) -> None:
        raise RuntimeError("join broke")

    g.entry(start)
    g.edge(start, [left, right])
    g.edge([left, right], join)
    with worker():
        run = g.delay()
        with pytest.raises(Compensated):
            run.wait(timeout=10)
    nodes = [c.node for c in run.history() if c.kind == "node"]
    assert nodes == ["start", "right", "left"]
    assert undone == ["left", "right", "start"]


# -- retry delays --------------------------------------------------------------------------


def test_step_retry_delays_fall_within_the_policy_bounds(durable: Durable, worker) -> None:
    policy = RetryPolicy(max_attempts=4, initial_delay=0.1, backoff=2, jitter=True)
    s = durable.saga("jittery", state=Order)
    seen: list[tuple[int, float]] = []

    @s.step(retry=policy)
    def reserve(state: Order, ctx: Context) -> dict[str, object]:
        seen.append((ctx.attempt, time.monotonic()))
        if ctx.attempt < 4:
            raise ConnectionError(f"attempt {ctx.attempt}")
        return {"reserved": True}

    with worker():
        assert s.delay().wait(timeout=10).reserved
    assert [a for a, _ in seen] == [1, 2, 3, 4]
    for (attempt, earlier), (_, later) in pairwise(seen):
        low, high = policy.bounds(attempt)
        gap = later - earlier
        # Never before the policy's lower bound; the upper one with room for a loaded machine
        # (a second or so of scheduling), which a delay outside the policy would still exceed.
        assert low - 0.02 <= gap <= high + 1.5, (attempt, gap, (low, high))


def test_a_step_without_compensation_that_commits_while_its_saga_compensates_is_not_undone(
    durable: Durable, worker
) -> None:
    s = durable.saga("uncompensated", state=Order)
    entered, go = threading.Event(), threading.Event()
    released: list[str] = []

    @s.step(compensate=lambda state, ctx: released.append("reserve"))
    def reserve(state: Order) -> dict[str, object]:
        return {"reserved": True}

    @s.step  # nothing to undo
    def ship(state: Order) -> None:
        entered.set()
        go.wait(10)

    with worker():
        run = s.delay(order_id="o-9")
        assert entered.wait(10)
        run.compensate("customer left")  # while ship is in flight
        go.set()
        with pytest.raises(Compensated):
            run.wait(timeout=10)
    assert run.status == Status.COMPENSATED and released == ["reserve"]
    assert [c.node for c in run.history() if c.kind == "compensation"] == ["reserve"]
