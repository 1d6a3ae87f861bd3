"""Flow control: circuit breakers shared through the database, fleet-wide rate limits, and
message priority, on SQLite with the in-process worker."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel

from celery_durable import CircuitOpen, Context, Durable, Execution, RateLimit, RetryPolicy
from celery_durable.errors import InvalidFlowOption, InvalidNodeOption, InvalidPriority
from celery_durable.model.records import BreakerRow, BreakerState, Kind
from celery_durable.policies.breakers import BreakerPolicy, admit, record
from celery_durable.policies.limits import Limit
from celery_durable.testing import assert_status, in_process_worker

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = BreakerPolicy("p", failure_threshold=3, window=10, reset_after=5)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_failures_within_the_window_open_the_breaker() -> None:
    row = BreakerRow()
    for t in (0, 1):
        row = record(POLICY, row, False, at(t), probe=False) or row
    assert row.state == BreakerState.CLOSED and row.failures == 2
    assert record(POLICY, row, True, at(2), probe=False) is None  # a success writes nothing
    opened = record(POLICY, row, False, at(3), probe=False)
    assert opened is not None and opened.state == BreakerState.OPEN and opened.opened_at == at(3)


def test_failures_spread_wider_than_the_window_do_not() -> None:
    row = BreakerRow()
    for t in (0, 1, 12):  # the third starts a new window
        row = record(POLICY, row, False, at(t), probe=False) or row
    assert row.state == BreakerState.CLOSED and row.failures == 1


def test_open_rejects_until_reset_after_then_lets_one_probe_through() -> None:
    row = BreakerRow(BreakerState.OPEN, 3, at(0), opened_at=at(0))
    admission, changed = admit(POLICY, row, at(4), probe_ttl=30)
    assert admission.retry_at == at(5) and changed is None
    admission, half = admit(POLICY, row, at(5), probe_ttl=30)
    assert admission.allowed and admission.probe
    assert half is not None and half.state == BreakerState.HALF_OPEN
    second, _ = admit(POLICY, half, at(6), probe_ttl=30)
    assert not second.allowed  # one probe at a time
    closed = record(POLICY, half, True, at(7), probe=True)
    assert closed == BreakerRow()
    reopened = record(POLICY, half, False, at(7), probe=True)
    assert reopened is not None and reopened.state == BreakerState.OPEN
    assert reopened.opened_at == at(7)


def test_a_probe_that_never_reports_is_replaced() -> None:
    half = BreakerRow(BreakerState.HALF_OPEN, 3, at(0), at(0), probe_until=at(10))
    admission, changed = admit(POLICY, half, at(11), probe_ttl=30)
    assert admission.probe and changed is not None and changed.probe_until == at(41)


def test_bad_declarations_are_refused(tmp_durable: Durable) -> None:
    with pytest.raises(InvalidFlowOption):
        tmp_durable.breaker("b", failure_threshold=0)
    with pytest.raises(InvalidFlowOption):
        RateLimit("r", 0)
    g = tmp_durable.graph("bad", state=Box)
    with pytest.raises(InvalidNodeOption, match="when_open"):
        g.node(when_open="sometimes")
    with pytest.raises(InvalidNodeOption, match="rate="):
        g.node(rate=100)


class Box(BaseModel):
    n: int = 0


class Dependency:
    """A service that fails until ``healthy`` is set; counts calls made while it is down."""

    def __init__(self) -> None:
        self.healthy = threading.Event()
        self.calls: list[tuple[float, bool]] = []

    def __call__(self) -> int:
        ok = self.healthy.is_set()
        self.calls.append((time.monotonic(), ok))
        if not ok:
            raise ConnectionError("payments API is down")
        return 1


@pytest.fixture
def tmp_durable(durable_embedded: Durable) -> Durable:
    return durable_embedded


def test_an_open_breaker_holds_runs_without_calls_or_spent_attempts(
    durable_embedded: Durable,
) -> None:
    durable = durable_embedded
    durable.breaker("payments", failure_threshold=2, window=30, reset_after=0.5)
    dependency = Dependency()
    g = durable.graph("pay", state=Box)

    @g.node(breaker="payments", retry=RetryPolicy(max_attempts=3, initial_delay=0.05))
    def charge(state: Box) -> dict[str, int]:
        return {"n": dependency()}

    g.entry(charge)
    with in_process_worker(durable, timers=True):
        runs = [g.delay() for _ in range(10)]
        time.sleep(1.5)
        dependency.healthy.set()
        for run in runs:
            run.wait(timeout=30)
    for run in runs:
        assert_status(run, "succeeded")
    failed = [t for t, ok in dependency.calls if not ok]
    # Two failures opened it; after that, only probes (one per reset_after at most) got through.
    assert 2 <= len(failed) <= 2 + 4, dependency.calls
    status = {b.name: b for b in durable.breakers()}["payments"]
    assert status.row.state == BreakerState.CLOSED and status.rejections > 0
    for run in runs:  # no run spent its attempt budget while held
        assert all(cp.meta.get("attempt", 1) <= 3 for cp in run.history() if cp.kind == Kind.NODE)


def test_when_open_fail_raises_circuit_open_in_the_attempt(durable_embedded: Durable) -> None:
    durable = durable_embedded
    durable.breaker("flaky", failure_threshold=1, reset_after=60)
    durable.set_breaker("flaky", "open", by="alice")
    g = durable.graph("fast", state=Box)

    @g.node(breaker="flaky", when_open="fail", retry=RetryPolicy(max_attempts=1))
    def call(state: Box) -> None:
        raise AssertionError("not called while open")

    g.entry(call)
    with in_process_worker(durable):
        run = g.delay()
        with pytest.raises(Exception, match="is open until"):
            run.wait(timeout=10)
    assert run.error is not None and run.error["type"] == CircuitOpen.__name__
    status = {b.name: b for b in durable.breakers()}["flaky"]
    assert status.changed_by == "alice"


def test_a_step_behind_an_open_breaker_holds_the_visit(durable_embedded: Durable) -> None:
    durable = durable_embedded
    durable.breaker("stripe", failure_threshold=1, reset_after=0.3)
    durable.set_breaker("stripe", "open", by="ops")
    calls: list[float] = []
    g = durable.graph("stepped", state=Box)

    @g.node
    def pay(state: Box, ctx: Context) -> dict[str, int]:
        return {
            "n": ctx.step("charge", lambda: calls.append(time.monotonic()) or 7, breaker="stripe")
        }

    g.entry(pay)
    with in_process_worker(durable, timers=True):
        run = g.delay()
        assert run.wait(timeout=10).n == 7
    assert len(calls) == 1


def test_a_rate_limit_spaces_calls_across_runs(durable_embedded: Durable) -> None:
    durable = durable_embedded
    g = durable.graph("limited", state=Box)
    starts: list[float] = []

    @g.node(rate=RateLimit("api", 20, per=1))
    def call(state: Box) -> None:
        starts.append(time.monotonic())

    g.entry(call)
    with in_process_worker(durable, pool="threads", concurrency=4):
        runs = [g.delay() for _ in range(20)]
        for run in runs:
            run.wait(timeout=20)
    starts.sort()
    took = starts[-1] - starts[0]
    assert took >= 19 / 20 * 0.9, starts  # 20 calls at 20/s span about 0.95 s, not less


def test_priority_must_be_0_to_9_and_changes_nothing(durable_embedded: Durable) -> None:
    g = durable_embedded.graph("prio", state=Box)

    @g.node
    def only(state: Box) -> None:
        return None

    g.entry(only)
    with pytest.raises(InvalidPriority):
        g.apply_async(priority=10)
    assert durable_embedded.list() == []


class Order(BaseModel):
    customer: str
    n: int = 0


def overlaps(intervals: list[tuple[float, float]]) -> bool:
    ordered = sorted(intervals)
    return any(b[0] < a[1] for a, b in itertools.pairwise(ordered))


def test_one_visit_per_key_at_once_first_come_first_served(durable_embedded: Durable) -> None:
    durable = durable_embedded
    g = durable.graph("keyed", state=Order)
    seen: dict[str, list[tuple[float, float, int]]] = {"a": [], "b": []}
    lock = threading.Lock()

    @g.node(concurrency=Limit(key=lambda state: state.customer, max=1))
    def work(state: Order) -> None:
        started = time.monotonic()
        time.sleep(0.05)
        with lock:
            seen[state.customer].append((started, time.monotonic(), state.n))

    g.entry(work)
    with in_process_worker(durable, pool="threads", concurrency=4, timers=True):
        runs = [g.delay(customer="ab"[i % 2], n=i) for i in range(12)]
        for run in runs:
            run.wait(timeout=30)
    for customer, visits in seen.items():
        assert len(visits) == 6
        assert not overlaps([(s, e) for s, e, _ in visits]), customer
        order = [n for _, _, n in sorted(visits)]
        # The first may overtake the queue only by arriving first; after it, submission order.
        assert order[1:] == sorted(order[1:]), (customer, order)


def test_a_graph_limit_holds_a_second_run_of_the_key_until_the_first_ends(
    durable_embedded: Durable,
) -> None:
    durable = durable_embedded
    g = durable.graph("one_at_a_time", state=Order, concurrency=Limit(key=lambda s: s.customer))

    @g.node
    def approve(state: Order, ctx: Context) -> dict[str, int]:
        return {"n": ctx.wait_for_event("go")}

    g.entry(approve)
    with in_process_worker(durable, timers=True):
        first = g.delay(customer="c")
        second = g.delay(customer="c")
        other = g.delay(customer="d")
        assert waiting_until(first, "waiting") and waiting_until(other, "waiting")
        time.sleep(0.6)  # a timer tick: the second is still in line, its node not run
        assert second.refresh().status == "running"
        assert [cp.kind for cp in second.history()] == [Kind.START]
        assert second.held_back == {"approve:1": "slot c"}
        first.send_event("go", 1)
        assert first.wait(timeout=10).n == 1
        assert waiting_until(second, "waiting")
        second.send_event("go", 2)
        other.send_event("go", 3)
        assert second.wait(timeout=10).n == 2 and other.wait(timeout=10).n == 3


def waiting_until(run: Execution, status: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run.refresh().status == status:
            return True
        time.sleep(0.02)
    return False
