"""The app the integration tests' worker subprocesses run (``celery -A tests.integration.app``).

Configured by environment, like a deployment: CELERY_BROKER_URL, CELERY_DURABLE_DATABASE_URL,
DURABLE_TEST_QUEUE (a queue per test run), DURABLE_TEST_LEDGER (a file every node run appends
to, so tests can count side effects, including the runs whose commit never happened). Chain
nodes write ``<execution> <node> <visit> start|done <pid>``, items ``<execution> item <i>``.
Saga steps and compensations write ``<execution> <event> <step> <attempt> <time.time()> <pid>
<steps done, comma-separated>`` with event one of step-start|step-done|step-fail and
comp-start|comp-done|comp-fail; the ``intervention_required`` signal, received in the worker,
writes ``signal <execution> <step> <pid>``.

``build()`` makes a fresh app, Durable and graphs from the environment as it is now: the worker
uses the module-level one built at import, the test process builds one per test (after setting
the test's database and queue in the environment) so both sides agree.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
import weakref
from dataclasses import dataclass
from typing import Any

from celery import Celery
from pydantic import BaseModel

from celery_durable import (
    Context,
    Durable,
    Graph,
    NonRetryable,
    RetryPolicy,
    Saga,
    intervention_required,
)

DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"
CHAIN_NODES = ("n1", "n2", "n3", "n4", "n5")
# The acceptance saga: four steps, each with a compensation.
TRIP_STEPS = ("s1", "s2", "s3", "s4")
TRIP_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.4, backoff=2, max_delay=2, jitter=True)
TRIP_COMPENSATION_RETRY = RetryPolicy(
    max_attempts=3, initial_delay=0.3, backoff=2, max_delay=2, jitter=False
)
# The soak saga: notify has no compensation; retries are quick so the soak stays short.
ORDER_STEPS = ("reserve", "charge", "notify", "ship")
ORDER_COMPENSATED = ("reserve", "charge", "ship")
ORDER_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.05, backoff=2, max_delay=0.2)
ORDER_COMPENSATION_RETRY = RetryPolicy(max_attempts=5, initial_delay=0.05, backoff=2, max_delay=0.2)
# A saga whose middle step retries once, after a delay long enough to wait in the database
# when the worker's eta_threshold is below it.
HOLD_STEPS = ("h1", "h2", "h3")
HOLD_RETRY = RetryPolicy(max_attempts=2, initial_delay=3, backoff=1, max_delay=3, jitter=False)


def ledger(*parts: object) -> None:
    path = os.environ.get("DURABLE_TEST_LEDGER")
    if path:
        with open(path, "a") as out:
            out.write(" ".join(str(p) for p in parts) + "\n")


class Work(BaseModel):
    count: int = 0
    sleep_at: str = ""
    sleep: float = 0.0
    trail: list[str] = []


class Items(BaseModel):
    total: int = 100
    item_sleep: float = 0.02
    done: int = 0


class Poison(BaseModel):
    ran: bool = False


class Batch(BaseModel):
    """A parent that maps ``size`` children (squares), or one child of it."""

    n: int = 0
    size: int = 0
    fail_at: int = -1
    sleep: float = 0.0
    results: list[int] = []


class Errand(BaseModel):
    """Every kind of wait: a step, a sleep, an event with a timeout, an approval."""

    sleep: float = 1.0
    label: str = ""
    paid: int = 0
    approved: bool = False
    woke: float = 0.0
    checked: int = 0
    shipped: bool = False


class Trip(BaseModel):
    """A saga's state: the input says which step fails, what is flaky, slow or blocked."""

    order_id: str = ""
    fail_at: str = ""  # this step fails on every attempt
    no_retry: bool = False  # ... and raises NonRetryable, so it fails for good at once
    flaky: dict[str, int] = {}  # step -> how many of its first attempts fail
    compensation_flaky: dict[str, int] = {}  # the same for the step's compensation
    step_sleep: dict[str, float] = {}  # step -> seconds it sleeps after step-start
    compensation_sleep: dict[str, float] = {}  # step -> seconds its undo sleeps after comp-start
    blocked_while: dict[str, str] = {}  # step -> a file; its undo fails while the file exists
    done: list[str] = []


@dataclass(frozen=True)
class DurableApp:
    """One Celery app with its Durable and the test graphs."""

    app: Celery
    durable: Durable
    queue: str
    chain: Graph
    items: Graph
    poison: Graph
    errand: Graph
    nap: Graph
    square: Graph
    batch: Graph
    leg: Saga
    journey: Saga
    trip: Saga
    order: Saga
    hold: Saga


def build() -> DurableApp:
    queue = os.environ.get("DURABLE_TEST_QUEUE", "durable-tests")
    app = Celery("durable_tests", broker=os.environ.get("CELERY_BROKER_URL", DEFAULT_BROKER))
    app.conf.update(
        task_default_queue=queue,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    durable = Durable(app)
    _durables.add(durable)
    children = _children(durable)
    return DurableApp(
        app=app,
        durable=durable,
        queue=queue,
        chain=_chain(durable),
        items=_items(durable),
        poison=_poison(durable),
        errand=_errand(durable, children["square"]),
        nap=_nap(durable),
        **children,
        trip=_saga(durable, "trip", TRIP_STEPS, TRIP_STEPS, TRIP_RETRY, TRIP_COMPENSATION_RETRY),
        order=_saga(
            durable, "order", ORDER_STEPS, ORDER_COMPENSATED, ORDER_RETRY, ORDER_COMPENSATION_RETRY
        ),
        hold=_saga(
            durable,
            "hold",
            HOLD_STEPS,
            HOLD_STEPS,
            TRIP_RETRY,
            TRIP_COMPENSATION_RETRY,
            retries={"h2": HOLD_RETRY},
        ),
    )


def _chain(durable: Durable) -> Graph:
    """n1 -> n2 -> n3 -> n4 -> n5; each appends start/done lines; ``sleep_at`` is slow."""
    chain = durable.graph("chain", state=Work)

    def make(name: str) -> None:
        def node(state: Work, ctx: Context) -> dict[str, object]:
            ledger(ctx.execution_id, name, ctx.visit, "start", os.getpid())
            if state.sleep_at == name:
                time.sleep(state.sleep)
            ledger(ctx.execution_id, name, ctx.visit, "done", os.getpid())
            return {"count": state.count + 1, "trail": [*state.trail, name]}

        node.__name__ = name
        chain.node(node)

    for name in CHAIN_NODES:
        make(name)
    chain.entry("n1")
    for a, b in itertools.pairwise(CHAIN_NODES):
        chain.edge(a, b)
    return chain


def _items(durable: Durable) -> Graph:
    items = durable.graph("items", state=Items)

    @items.node(retry=RetryPolicy(max_attempts=2, initial_delay=0.1))
    def loop(state: Items, ctx: Context) -> dict[str, int]:
        """Processes items one sub-step each; a crash resumes at the first uncommitted item."""

        def process(i: int) -> int:
            ledger(ctx.execution_id, "item", i)
            time.sleep(state.item_sleep)
            return i

        done = [ctx.step(f"item-{i}", process, i) for i in range(state.total)]
        return {"done": len(done)}

    items.entry(loop)
    return items


def _errand(durable: Durable, square: Graph) -> Graph:
    """prepare (a step, a sleep, an event, a child run) -> ship (waits for approval first).
    Ledger lines: ``<execution> label made``, ``<execution> prepare|ship start <pid>``."""
    errand = durable.graph("errand", state=Errand)

    @errand.node
    def prepare(state: Errand, ctx: Context) -> dict[str, object]:
        ledger(ctx.execution_id, "prepare", "start", os.getpid())

        def make_label() -> str:
            ledger(ctx.execution_id, "label", "made")
            return f"L-{ctx.execution_id[:8]}"

        label = ctx.step("label", make_label)
        ctx.sleep(state.sleep)
        paid = ctx.wait_for_event("paid", timeout=300)
        checked = ctx.wait_child(ctx.start_child(square, {"n": paid["amount"]}))
        return {"label": label, "paid": paid["amount"], "checked": checked["n"]}

    @errand.node(interrupt_before=True)
    def ship(state: Errand, ctx: Context) -> dict[str, object]:
        ledger(ctx.execution_id, "ship", "start", os.getpid())
        return {"shipped": state.approved}

    errand.entry(prepare)
    errand.edge(prepare, ship)
    return errand


def _nap(durable: Durable) -> Graph:
    """One node that sleeps, then says when it woke: what the sleep tests count."""
    nap = durable.graph("nap", state=Errand)

    @nap.node
    def doze(state: Errand, ctx: Context) -> dict[str, float]:
        ctx.sleep(state.sleep)
        return {"woke": time.time()}

    nap.entry(doze)
    return nap


def _children(durable: Durable) -> dict[str, Any]:
    """square (a child: n*n, fails at fail_at, sleeps first if asked), batch (maps squares),
    and two sagas: journey's first step starts a leg saga, its second always fails.
    Ledger lines: ``<execution> square <n>``, ``<execution> undo leg|journey``."""
    square = durable.graph("square", state=Batch)

    @square.node(retry=RetryPolicy.never())
    def calc(state: Batch, ctx: Context) -> dict[str, int]:
        ledger(ctx.execution_id, "square", state.n)
        if state.sleep:
            ctx.sleep(state.sleep)
        if state.n == state.fail_at:
            raise NonRetryable(f"no square for {state.n}")
        return {"n": state.n * state.n}

    square.entry(calc)
    batch = durable.graph("batch", state=Batch)

    @batch.node(retry=RetryPolicy.never())
    def fan(state: Batch, ctx: Context) -> dict[str, object]:
        inputs = [
            {"n": i, "fail_at": state.fail_at, "sleep": state.sleep} for i in range(state.size)
        ]
        return {"results": [child["n"] for child in ctx.map(square, inputs)]}

    batch.entry(fan)
    leg = durable.saga("leg", state=Batch)

    @leg.step
    def book_leg(state: Batch) -> None:
        return None

    @book_leg.compensation
    def cancel_leg(state: Batch, ctx: Context) -> None:
        ledger(ctx.execution_id, "undo", "leg")

    journey = durable.saga("journey", state=Batch)

    @journey.step
    def book(state: Batch, ctx: Context) -> None:
        ctx.wait_child(ctx.start_child(leg, {"n": state.n}))

    @book.compensation
    def unbook(state: Batch, ctx: Context) -> None:
        ledger(ctx.execution_id, "undo", "journey")

    @journey.step(retry=RetryPolicy.never())
    def pay(state: Batch) -> None:
        raise NonRetryable("card declined")

    return {"square": square, "batch": batch, "leg": leg, "journey": journey}


def _poison(durable: Durable) -> Graph:
    poison = durable.graph("poison", state=Poison)

    @poison.node
    def explode(state: Poison, ctx: Context) -> dict[str, bool]:
        """Kills the pool process running it, every time: a message no worker survives."""
        ledger(ctx.execution_id, "explode", ctx.visit, "start")
        # Die mid-work, as a crashing node does: a child that dies the instant it receives a
        # job leaves the pool unsure it ever started it, and billiard then waits seconds
        # (worker_lost_wait) before it gives the job up and the message is requeued.
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)
        return {"ran": True}  # pragma: no cover - never reached

    poison.entry(explode)
    return poison


def _saga(
    durable: Durable,
    name: str,
    steps: tuple[str, ...],
    compensated: tuple[str, ...],
    retry: RetryPolicy,
    compensation_retry: RetryPolicy,
    retries: dict[str, RetryPolicy] | None = None,
) -> Saga:
    """``steps`` in order, those in ``compensated`` with an undo; behaviour set by the state.

    Every step retries per ``retry`` unless ``retries`` names a policy of its own."""
    saga = durable.saga(name, state=Trip)

    def note(event: str, step: str, state: Trip, ctx: Context) -> None:
        done = ",".join(state.done) or "-"
        ledger(ctx.execution_id, event, step, ctx.attempt, f"{time.time():.6f}", os.getpid(), done)

    def make(step: str) -> None:
        def run(state: Trip, ctx: Context) -> dict[str, object]:
            note("step-start", step, state, ctx)
            if state.step_sleep.get(step):
                time.sleep(state.step_sleep[step])
            if state.fail_at == step or ctx.attempt <= state.flaky.get(step, 0):
                note("step-fail", step, state, ctx)
                error = NonRetryable if state.fail_at == step and state.no_retry else RuntimeError
                raise error(f"{step} failed at attempt {ctx.attempt}")
            note("step-done", step, state, ctx)
            return {"done": [*state.done, step]}

        def undo(state: Trip, ctx: Context) -> None:
            note("comp-start", step, state, ctx)
            if state.compensation_sleep.get(step):
                time.sleep(state.compensation_sleep[step])
            blocked = state.blocked_while.get(step)
            if ctx.attempt <= state.compensation_flaky.get(step, 0) or (
                blocked and os.path.exists(blocked)
            ):
                note("comp-fail", step, state, ctx)
                raise ConnectionError(f"undo of {step} failed at attempt {ctx.attempt}")
            note("comp-done", step, state, ctx)

        run.__name__ = step
        undo.__name__ = f"undo_{step}"
        saga.step(
            name=step,
            retry=(retries or {}).get(step, retry),
            compensate=undo if step in compensated else None,
            compensation_retry=compensation_retry if step in compensated else None,
        )(run)

    for step in steps:
        make(step)
    return saga


def _on_intervention(sender: object = None, **kwargs: object) -> None:
    """The worker received ``intervention_required``: say so in the ledger (the alert)."""
    if sender in _durables:
        ledger("signal", kwargs.get("execution_id"), kwargs.get("step"), os.getpid())


# Only Durables built here write the ledger: unit tests send the signal in-process too.
_durables: weakref.WeakSet[Durable] = weakref.WeakSet()
intervention_required.connect(_on_intervention, weak=False)


# What `celery -A tests.integration.app worker` runs.
_default = build()
app = _default.app
durable = _default.durable
chain = _default.chain
items = _default.items
poison = _default.poison
trip = _default.trip
order = _default.order
hold = _default.hold
