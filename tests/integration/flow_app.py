"""The app of the flow control integration tests (``celery -A tests.integration.flow_app``).

Configured by the same environment as ``tests.integration.app`` (broker, database, queue,
ledger). Every node call appends ``<what> <time.time()> ...`` to the ledger, so the test
can see calls, their intervals and their order across worker processes. The queue is a
priority queue (``x-max-priority`` 10).

- ``pay``: one node behind the ``payments`` breaker; the dependency fails while the time is
  before the number in the file DURABLE_TEST_OUTAGE (no file: healthy).
- ``keyed``: one node, at most one visit per customer at once; sleeps ``hold`` seconds.
- ``limited``: one node, 50 calls a second over the fleet.
- ``ranked``: two nodes, for priorities.
- ``timed``: three nodes with ``timeout=``: ``fast`` (30 s), ``slow`` (sleeps past its 0.5 s
  on its first attempt), ``stubborn`` (ignores its 0.5 s on its first run: the hard limit).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from celery import Celery
from pydantic import BaseModel

from celery_durable import Context, Durable, Graph, Limit, RateLimit, RetryPolicy
from celery_durable.errors import NodeTimeout

DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"

BREAKER_THRESHOLD = 5
BREAKER_RESET = 1.0
PAY_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.2, backoff=2, max_delay=1, jitter=False)
RATE = 50


def ledger(*parts: object) -> None:
    """One line per call; not imported from tests.integration.app, whose import builds and
    connects another Durable to the worker's signals."""
    path = os.environ.get("DURABLE_TEST_LEDGER")
    if path:
        with open(path, "a") as out:
            out.write(" ".join(str(p) for p in parts) + "\n")


class Payment(BaseModel):
    n: int = 0
    paid: bool = False


class Job(BaseModel):
    customer: str
    n: int = 0
    hold: float = 0.05


@dataclass
class FlowApp:
    app: Celery
    durable: Durable
    pay: Graph
    keyed: Graph
    limited: Graph
    ranked: Graph
    timed: Graph


def outage_until() -> float:
    path = os.environ.get("DURABLE_TEST_OUTAGE")
    try:
        with open(path or "") as f:
            return float(f.read())
    except (OSError, ValueError):
        return 0.0


def build() -> FlowApp:
    queue = os.environ.get("DURABLE_TEST_QUEUE", "durable-flow-tests")
    app = Celery("durable_flow", broker=os.environ.get("CELERY_BROKER_URL", DEFAULT_BROKER))
    app.conf.update(
        task_default_queue=queue,
        task_queue_max_priority=10,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    durable = Durable(app)
    durable.breaker(
        "payments", failure_threshold=BREAKER_THRESHOLD, window=30, reset_after=BREAKER_RESET
    )
    pay = durable.graph("pay", state=Payment)

    @pay.node(breaker="payments", retry=PAY_RETRY)
    def charge(state: Payment) -> dict[str, bool]:
        if time.time() < outage_until():
            ledger("call", time.time(), "fail", state.n)
            raise ConnectionError("payments API is down")
        ledger("call", time.time(), "ok", state.n)
        return {"paid": True}

    pay.entry(charge)

    keyed = durable.graph("keyed", state=Job)

    @keyed.node(concurrency=Limit(key=lambda job: job.customer, max=1))
    def work(job: Job) -> None:
        started = time.time()
        ledger("start", started, job.customer, job.n, os.getpid())
        time.sleep(job.hold)
        ledger("end", started, job.customer, job.n, time.time())

    keyed.entry(work)

    limited = durable.graph("limited", state=Job)

    @limited.node(rate=RateLimit("fleet", RATE, per=1))
    def call(job: Job) -> None:
        ledger("rate", time.time(), job.n)

    limited.entry(call)

    ranked = durable.graph("ranked", state=Job)

    @ranked.node
    def first(job: Job) -> None:
        time.sleep(job.hold)

    @ranked.node
    def second(job: Job) -> None:
        ledger("ranked", time.time(), job.customer, job.n)

    ranked.entry(first)
    ranked.edge(first, second)
    return FlowApp(app, durable, pay, keyed, limited, ranked, _timed(durable))


def _timed(durable: Durable) -> Graph:
    timed = durable.graph("timed", state=Job)

    @timed.node(timeout=30)
    def fast(job: Job) -> None:
        ledger("timed", "fast", os.getpid())

    @timed.node(timeout=0.5, retry=RetryPolicy(max_attempts=2, initial_delay=0.1))
    def slow(job: Job, ctx: Context) -> None:
        ledger("timed", "slow", ctx.attempt, time.time())
        if ctx.attempt == 1:
            time.sleep(3)

    @timed.node(timeout=0.5)
    def stubborn(job: Job) -> None:
        with open(os.environ["DURABLE_TEST_LEDGER"]) as seen:
            first_run = "stubborn" not in seen.read()
        ledger("timed", "stubborn", os.getpid(), time.time())
        while first_run:
            try:
                time.sleep(10)
            except NodeTimeout:
                ledger("timed", "ignored", os.getpid(), time.time())

    timed.entry(fast)
    timed.edge(fast, slow)
    timed.edge(slow, stubborn)
    return timed


flow = build()
app = flow.app
