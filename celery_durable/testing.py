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
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.contrib.testing.worker import TestWorkController, setup_app_for_worker
from celery.worker import WorkController
from celery.worker import state as worker_state

from celery_durable.constants import RECOVERY_TASK
from celery_durable.durable import Durable
from celery_durable.engine.recovery import RecoveryLoop, RecoveryReport

POLLING_INTERVAL = 0.01
SHUTDOWN_TIMEOUT = 10.0


def embedded_app(name: str = "durable-embedded") -> Celery:
    """A Celery app on kombu's in-memory transport: broker and worker live in this process."""
    app = Celery(name, broker="memory://localhost/", set_as_current=False)
    app.conf.update(
        broker_transport_options={"polling_interval": POLLING_INTERVAL},
        broker_heartbeat=0,
        worker_hijack_root_logger=False,
        task_default_queue=f"{name}-queue",
    )
    return app


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
        # stop flag; a message ends each poll at once. The recovery task is harmless to run.
        for _ in range(2):
            app.send_task(RECOVERY_TASK)
        thread.join(SHUTDOWN_TIMEOUT)
        worker_state.should_terminate = None
        if thread.is_alive():
            raise RuntimeError(f"the in-process worker did not stop within {SHUTDOWN_TIMEOUT} s")


def fast_forward(durable: Durable, duration: float | timedelta) -> RecoveryReport:
    """Let ``duration`` pass for every timer in ``durable``'s database (durable sleeps, event
    wait timeouts, retries waiting there), then fire those now due, as a worker's sweep would:
    a test of an hour-long sleep takes no hour. Returns the sweep's report (``woken``,
    ``retries``)."""
    by = duration if isinstance(duration, timedelta) else timedelta(seconds=duration)
    durable.visits.shift_due(by)
    return durable.recover()
