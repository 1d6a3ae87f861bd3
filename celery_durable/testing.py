"""Test drivers for your own graphs and sagas: an in-memory broker and an in-process worker.

::

    app = embedded_app("tests")
    durable = Durable(app, database_url="sqlite:///:memory:")
    durable.migrate()
    ...define graphs...
    with in_process_worker(durable):
        assert graph.delay(x=1).wait(timeout=10).x == 2

The same pieces run ``celery-durable demo``: no server needed. ``fast_forward(durable, 3600)``
makes an hour pass for durable sleeps, event timeouts and retries waiting in the database.

An app built at import, as ``app = Celery("shop", broker="amqp://..."); durable = Durable(app)``
in ``shop.py``, is tested as written: ``embed`` points it, for a block, at a database of the
test's own and at the in-memory broker, with nothing set in the environment before import::

    import shop

    with embed(shop.durable, "sqlite:///test.sqlite3"), in_process_worker(shop.durable):
        assert shop.orders.delay(order_id="o-1", amount=30).wait(timeout=10).reserved
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from weakref import WeakKeyDictionary

from celery import Celery
from celery.contrib.testing.worker import TestWorkController, setup_app_for_worker
from celery.signals import worker_shutdown
from celery.worker import WorkController
from celery.worker import state as worker_state

from celery_durable.constants import TASK_PREFIX
from celery_durable.durable import Durable
from celery_durable.engine.execution import Execution
from celery_durable.engine.recovery import RecoveryLoop, RecoveryReport, sweep
from celery_durable.faults import SimulatedCrash
from celery_durable.model.records import Kind, utcnow
from celery_durable.status import Status

POLLING_INTERVAL = 0.01
# What an app runs on in the tests: kombu's in-memory transport, polled every 10 ms (it polls
# once a second by default, which a stopping worker waits out, twice). The worker's timer,
# which holds countdown messages (short retries), looks at its schedule as often: at its
# default of once a second, a retry due in 0.1 s that arrives while the timer sleeps towards
# a later entry runs up to a second late.
MEMORY_BROKER: Mapping[str, Any] = {
    "broker_url": "memory://localhost/",
    "broker_read_url": None,
    "broker_write_url": None,
    "broker_transport_options": {"polling_interval": POLLING_INTERVAL},
    "broker_heartbeat": 0,
    "worker_hijack_root_logger": False,
    "worker_timer_precision": POLLING_INTERVAL,
}
# Celery reads these before any configuration: set, they would win over MEMORY_BROKER.
BROKER_ENVIRONMENT = ("CELERY_BROKER_URL", "CELERY_BROKER_READ_URL", "CELERY_BROKER_WRITE_URL")
SHUTDOWN_TIMEOUT = 10.0
# What wakes the in-process worker's consumer to stop: a task that does nothing. (The recovery
# task did the job once, but its sweep could dispatch a retry that had just come due, or a run
# gone stale, which is for the test to decide.)
WAKE_TASK = f"{TASK_PREFIX}.testing.wake"


@contextmanager
def throwaway_database(admin_url: str, name: str | None = None) -> Iterator[str]:
    """A PostgreSQL database created under ``admin_url`` (a server URL with a database to log
    in to) and dropped at exit, open connections and all; yields its SQLAlchemy URL."""
    import psycopg

    dsn = admin_url.replace("postgresql+psycopg://", "postgresql://", 1)
    name = name or f"durable_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        base = dsn.rpartition("/")[0]
        yield f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def embedded_app(name: str = "durable-embedded") -> Celery:
    """A Celery app on kombu's in-memory transport: broker and worker live in this process."""
    app = Celery(name, set_as_current=False)
    app.conf.update(MEMORY_BROKER, task_default_queue=f"{name}-queue")
    return app


@contextmanager
def embed(durable: Durable, database_url: str) -> Iterator[Durable]:
    """Point ``durable``, built at import with its app, at ``database_url`` (migrated) and its
    app at the in-memory broker for the block; put both back after. Graphs, nodes and routes
    stay as the module defined them: the module-level app style tested as written. Enter it
    before the app sends anything; leave it with no worker running. ``CELERY_BROKER_URL``
    and its read/write variants, which Celery prefers to any configuration, are unset for
    the block."""
    app, db = durable.app, durable.db
    was = {key: app.conf.get(key) for key in MEMORY_BROKER}
    environment = {name: os.environ.pop(name) for name in BROKER_ENVIRONMENT if name in os.environ}
    url, default = db.url, db.default
    _forget_connections(app)
    app.conf.update(MEMORY_BROKER)
    db.repoint(database_url)
    try:
        durable.migrate()
        yield durable
    finally:
        _purge(app)
        db.repoint(url, default=default)
        _forget_connections(app)
        app.conf.update(was)
        os.environ.update(environment)


def _forget_connections(app: Celery) -> None:
    """Let go of the app's broker pools, so the next message goes where its configuration
    says now: what Celery itself does in a forked child (``_after_fork``), without the signal.
    Not closed: kombu keeps one pool per broker address for the whole process, and the next
    block on the in-memory broker takes the same one up again."""
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


def _purge(app: Celery) -> None:
    """Empty the app's queues on the in-memory broker, whose messages outlive the block (its
    queues are the process's): the next test starts with none of this one's."""
    with app.connection_for_write() as conn:
        for name in list(app.amqp.queues):
            conn.default_channel.queue_purge(name)


@contextmanager
def in_process_worker(
    durable: Durable,
    *,
    pool: str = "solo",
    concurrency: int = 1,
    timers: bool = False,
    **options: Any,
) -> Iterator[WorkController]:
    """Run a worker for ``durable``'s app in a thread of this process until the block ends.

    Define every graph before entering: a worker knows the tasks registered when it starts.
    With ``timers``, it also fires timers and sweeps as a real worker does (sleeps end on their
    own); without, tests decide when time passes (``fast_forward``, ``durable.recover()``).
    """
    app = durable.app
    if WAKE_TASK not in app.tasks:
        app.task(name=WAKE_TASK, shared=False, ignore_result=True)(_wake)
    setup_app_for_worker(app, "WARNING", None)
    worker = TestWorkController(
        app=app,
        pool=pool,
        concurrency=concurrency,
        hostname=f"embedded-{uuid.uuid4().hex[:8]}@localhost",
        loglevel="WARNING",
        ready_callback=None,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        **options,
    )
    thread = threading.Thread(target=worker.start, name="durable-worker", daemon=True)
    thread.start()
    worker.ensure_started()
    sweeper = RecoveryLoop(durable.runtime)
    if timers:
        sweeper.start()
    try:
        yield worker
    finally:
        sweeper.stop()
        worker_state.should_terminate = 0
        # The consumer polls the in-memory queue for up to 2 s, twice, around its look at the
        # stop flag; a message ends each poll at once.
        for _ in range(2):
            app.send_task(WAKE_TASK)
        thread.join(SHUTDOWN_TIMEOUT)
        worker_state.should_terminate = None
        # As a worker process does on its way out: it leaves the fleet's rows, among others.
        worker_shutdown.send(sender=worker)
        if thread.is_alive():
            raise RuntimeError(f"the in-process worker did not stop within {SHUTDOWN_TIMEOUT} s")


def _wake() -> None:
    """Nothing: the message only ends the consumer's poll."""


def fast_forward(durable: Durable, duration: float | timedelta) -> RecoveryReport:
    """Let ``duration`` pass, as far as durable timers and the recovery sweep can tell, and
    sweep once: sleeps and event timeouts due by then wake, retries waiting in the database
    are dispatched, and runs with no progress for ``stale_after`` by then (a crashed attempt,
    see ``faults.crash_at``) are dispatched again. Time passed so far adds up across calls,
    per Durable. Returns the sweep's report (``woken``, ``retries``, ``redispatched``).

    Call it while the worker is idle: a node still running counts as no progress too. A fault
    armed with ``crash_at`` that this sweep hits ends it, as it would end its process: the
    report is then empty, and a later sweep heals what the crash left."""
    by = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
    _passed[durable] = _passed.get(durable, 0.0) + by
    try:
        return sweep(durable.runtime, now=utcnow() + timedelta(seconds=_passed[durable]))
    except SimulatedCrash:
        return RecoveryReport()


# How much time fast_forward() let pass for each Durable: it only ever moves forward.
_passed: WeakKeyDictionary[Durable, float] = WeakKeyDictionary()


def assert_status(run: Execution, status: Status | str) -> None:
    """The run ended (or stands) in ``status``; otherwise say where it is and why."""
    assert run.status == status, f"{run.id} is {run.status}, not {status}: {run.error}"


def assert_committed_once(run: Execution, nodes: Iterable[str]) -> None:
    """Each of ``nodes`` committed exactly one visit, whatever ran twice."""
    visits = Counter(cp.node for cp in run.history() if cp.kind == Kind.NODE)
    wrong = {node: visits[node] for node in nodes if visits[node] != 1}
    assert not wrong, f"{run.id}: nodes not committed exactly once (node: commits): {wrong}"


def assert_compensated_in_order(run: Execution, steps: Sequence[str]) -> None:
    """The compensations that committed, in the order they did."""
    undone = [cp.node for cp in run.history() if cp.kind == Kind.COMPENSATION]
    assert undone == list(steps), f"{run.id}: compensated {undone}, expected {list(steps)}"


def assert_once_per_key(keys: Iterable[str]) -> None:
    """Side effects recorded by idempotency key (``ctx.idempotency_key``) happened once each."""
    repeated = {key: n for key, n in Counter(keys).items() if n > 1}
    assert not repeated, f"side effects repeated for these idempotency keys: {repeated}"


def waiting_for(run: Execution, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """Block until the run waits for ``kind`` (sleep, event, interrupt, child, children);
    returns ``run.waiting_on``. Raises TimeoutError, saying what it waits for instead."""
    deadline = time.monotonic() + timeout
    while True:
        waits = run.waiting_on
        if waits is not None and waits["kind"] == kind:
            return waits
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run.id} is {run.status}, waiting for {waits}, not a {kind}")
        time.sleep(0.005)
