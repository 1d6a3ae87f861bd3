"""Durable waits, embedded (SQLite, in-process worker): sleeps, events and interrupts hold no
worker, wake once, and a re-run returns what the visit recorded."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from celery_durable import (
    Context,
    Durable,
    EventTimeout,
    ExecutionFailed,
    ExecutionNotFound,
    InvalidInput,
    InvalidTransition,
    NotWaiting,
    Status,
)
from celery_durable.errors import NotJSONSerializable, PayloadTooLarge
from celery_durable.metrics import instrument, metrics_registry
from celery_durable.testing import fast_forward
from tests.waiting import wait_for


class Order(BaseModel):
    order_id: str = "o-1"
    label: str = ""
    paid: int = 0
    items: list[str] = []
    approved: bool = False
    timed_out: bool = False


def waiting(run: Any, **expected: Any) -> dict[str, Any]:
    """The run's wait, once it waits (and, given ``expected``, on a wait that has those
    items: a run woken by an event waits on its old wait until a worker takes the wake)."""

    def found() -> dict[str, Any] | None:
        wait = run.waiting_on
        if wait is None or any(wait.get(k) != v for k, v in expected.items()):
            return None
        return wait if run.status == Status.WAITING else None

    return wait_for(found, 5.0, what=f"a wait {expected}")


def kinds(run: Any) -> Counter[tuple[str, str]]:
    return Counter((str(cp.kind), cp.node) for cp in run.history())


def test_a_sleep_holds_no_worker_and_a_step_before_it_runs_once(durable: Durable, worker) -> None:
    calls: Counter[str] = Counter()
    g = durable.graph("sleepy", state=Order)

    @g.node
    def ship(state: Order, ctx: Context) -> dict[str, str]:
        calls["ship"] += 1
        label = ctx.step("label", lambda: calls.update(["label"]) or f"L-{state.order_id}")
        ctx.sleep(3600)
        return {"label": label}

    g.entry(ship)
    with worker():
        run = g.delay()
        # Given a run that sleeps an hour: it waits, and its message was acked
        assert waiting(run)["kind"] == "sleep"
        assert run.waiting_on is not None and run.waiting_on["node"] == "ship"
        # When the hour passes (fast-forwarded: no real waiting)
        report = fast_forward(durable, 3600)
        # Then it is woken once and finishes; the step before the sleep ran once
        assert report.woken == 1
        assert run.wait(timeout=10).label == "L-o-1"
    assert calls == {"ship": 2, "label": 1}
    assert kinds(run)[("wait", "ship@0")] == 1
    assert kinds(run)[("wake", "ship@0")] == 1
    assert kinds(run)[("node", "ship")] == 1
    assert run.waiting_on is None
    assert fast_forward(durable, 3600).woken == 0  # woken once, however often timers fire


def test_events_are_consumed_in_send_order_and_kept_when_sent_early(
    durable: Durable, worker
) -> None:
    g = durable.graph("inbox", state=Order)

    @g.node
    def collect(state: Order, ctx: Context) -> dict[str, Any]:
        first = ctx.wait_for_event("item")
        second = ctx.wait_for_event("item")
        paid = ctx.wait_for_event("paid")
        return {"items": [first, second], "paid": paid["amount"]}

    g.entry(collect)
    with worker():
        run = g.delay()
        run.send_event("item", "a")  # maybe before the wait, maybe after: kept either way
        run.send_event("item", "b", idempotency_key="b")
        run.send_event("item", "b-again", idempotency_key="b")  # same key: one event
        assert waiting(run, event="paid")["kind"] == "event"
        durable.send_event(run.id, "paid", {"amount": 30}, idempotency_key="psp-1")
        durable.send_event(run.id, "paid", {"amount": 30}, idempotency_key="psp-1")
        final = run.wait(timeout=10)
    assert final.items == ["a", "b"] and final.paid == 30
    with pytest.raises(InvalidTransition):
        run.send_event("item", "late")


def test_who_sent_an_event_and_why_is_kept_with_it_and_its_wake(durable: Durable, worker) -> None:
    g = durable.graph("audited_inbox", state=Order)

    @g.node
    def take(state: Order, ctx: Context) -> dict[str, Any]:
        return {"items": [ctx.wait_for_event("item")]}

    g.entry(take)
    with worker():
        run = g.delay()
        assert waiting(run, event="item")["kind"] == "event"
        event = run.send_event("item", "a", by="ops@shop", reason="customer called")
        run.wait(timeout=10)
    assert (event.sent_by, event.reason) == ("ops@shop", "customer called")
    woke = [cp for cp in run.history() if cp.kind == "wake"]
    assert woke[0].output == {"event": event.id, "payload": "a", "by": "ops@shop"}
    anonymous = durable.graph("anonymous_inbox", state=Order)
    anonymous.node(take, name="take")
    anonymous.entry("take")
    quiet = anonymous.delay()
    assert "@" in durable.send_event(quiet.id, "item", "b").sent_by  # user@host by default


def test_a_bad_event_is_refused_and_nothing_is_stored(durable: Durable, worker) -> None:
    g = durable.graph("picky", state=Order)

    @g.node
    def take(state: Order, ctx: Context) -> dict[str, Any]:
        return {"items": [ctx.wait_for_event("item")]}

    g.entry(take)
    with worker():
        run = g.delay()
        waiting(run)
        with pytest.raises(ExecutionNotFound):
            durable.send_event("no-such-run", "item", "x")
        with pytest.raises(NotJSONSerializable):
            run.send_event("item", object())
        with pytest.raises(PayloadTooLarge):
            run.send_event("item", "x" * (durable.settings.max_state_bytes + 1))
        with pytest.raises(InvalidInput):
            run.send_event("", "x")
        assert run.status == Status.WAITING  # nothing above was stored or woke it
        run.send_event("item", "ok")
        assert run.wait(timeout=10).items == ["ok"]


def test_an_event_timeout_can_be_caught_or_fail_the_node(durable: Durable, worker) -> None:
    g = durable.graph("patient", state=Order)

    @g.node
    def maybe(state: Order, ctx: Context) -> dict[str, Any]:
        try:
            ctx.wait_for_event("paid", timeout=86400)
        except EventTimeout:
            return {"timed_out": True}
        return {}

    g.entry(maybe)
    strict = durable.graph("strict", state=Order)

    @strict.node
    def must(state: Order, ctx: Context) -> dict[str, Any]:
        return {"paid": ctx.wait_for_event("paid", timeout=60)["amount"]}

    strict.entry(must)
    with worker():
        caught, failing = maybe.graph.delay(), strict.delay()
        waiting(caught), waiting(failing)
        fast_forward(durable, 86400)
        assert caught.wait(timeout=10).timed_out is True
        with pytest.raises(ExecutionFailed) as failed:
            failing.wait(timeout=10)
    assert failed.value.error["type"] == "EventTimeout"
    assert failed.value.error["attempt"] == 1  # not retried: a retry would time out again


def test_interrupts_wait_for_an_approval_with_a_validated_update(durable: Durable, worker) -> None:
    ran: list[str] = []
    g = durable.graph("approval", state=Order)

    @g.node(interrupt_after=True)
    def quote(state: Order) -> dict[str, int]:
        ran.append("quote")
        return {"paid": 10}

    @g.node(interrupt_before=True)
    def charge(state: Order) -> dict[str, int]:
        ran.append("charge")
        assert state.approved
        return {"paid": state.paid + 1}

    g.entry(quote)
    g.edge(quote, charge)
    with worker():
        run = g.delay()
        assert waiting(run) == {"kind": "interrupt", "node": "quote", "when": "after"}
        run.resume(by="ops@shop", reason="quote looks right")
        assert waiting(run) == {"kind": "interrupt", "node": "charge", "when": "before"}
        assert ran == ["quote"]
        with pytest.raises(InvalidInput):
            run.resume(update={"approved": "not a bool"})
        with pytest.raises(InvalidInput):
            run.resume(update={"no_such_field": 1})
        assert run.status == Status.WAITING and ran == ["quote"]  # refused: nothing changed
        run.resume(update={"approved": True}, by="ops@shop", reason="checked")
        final = run.wait(timeout=10)
    assert ran == ["quote", "charge"] and final.paid == 11 and final.approved
    wakes = [cp for cp in run.history() if cp.kind == "wake"]
    assert [(cp.node, cp.meta["by"]) for cp in wakes] == [
        ("quote@after", "ops@shop"),
        ("charge@before", "ops@shop"),
    ]
    with pytest.raises(InvalidTransition):
        run.resume()


def test_pause_cancel_and_compensate_apply_to_a_waiting_run(durable: Durable, worker) -> None:
    undone: list[str] = []
    s = durable.saga("waiting_saga", state=Order)

    @s.step
    def reserve(state: Order) -> None:
        return None

    @reserve.compensation
    def release(state: Order) -> None:
        undone.append("reserve")

    @s.step
    def wait_payment(state: Order, ctx: Context) -> dict[str, Any]:
        return {"paid": ctx.wait_for_event("paid")}

    g = durable.graph("napper", state=Order)

    @g.node
    def nap(state: Order, ctx: Context) -> None:
        ctx.sleep(60)

    g.entry(nap)
    with worker():
        saga_run, nap_run = s.delay(), g.delay()
        waiting(saga_run), waiting(nap_run)
        with pytest.raises(NotWaiting):
            nap_run.resume(update={"approved": True})
        nap_run.pause(reason="hold on")
        fast_forward(durable, 60)
        assert nap_run.status == Status.PAUSED  # woken while paused: goes on at resume
        nap_run.resume()
        assert nap_run.wait(timeout=10) is not None
        saga_run.compensate("customer left")
        with pytest.raises(ExecutionFailed):
            saga_run.wait(timeout=10)
        cancelled = g.delay()
        waiting(cancelled)
        cancelled.cancel(reason="not needed")
        assert fast_forward(durable, 60).woken == 0
    assert saga_run.status == Status.COMPENSATED and undone == ["reserve"]
    assert cancelled.status == Status.CANCELLED


def test_metrics_count_waiting_runs_by_kind_and_time_wake_ups(durable: Durable, worker) -> None:
    registry = CollectorRegistry()
    instrument(durable, registry)
    g = durable.graph("timed", state=Order)

    @g.node
    def nap(state: Order, ctx: Context) -> None:
        ctx.sleep(60)

    g.entry(nap)
    with worker():
        run = g.delay()
        waiting(run)
        served = metrics_registry(durable, in_process=registry)
        assert (
            served.get_sample_value("celery_durable_waiting", {"graph": "timed", "kind": "sleep"})
            == 1
        )
        fast_forward(durable, 60)
        run.wait(timeout=10)
    lag = {"graph": "timed", "kind": "sleep"}
    assert registry.get_sample_value("celery_durable_wake_lag_seconds_count", lag) == 1
    assert (
        served.get_sample_value("celery_durable_waiting", {"graph": "timed", "kind": "sleep"})
        is None
    )
