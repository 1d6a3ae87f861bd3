"""Testing the example shop's workflows the way you would test yours: crashes at the worst
moments, an hour-long sleep and a day-long event timeout, each in well under a second, with no
server (SQLite, an in-process broker and worker). ``pytest examples/`` runs it.

The pattern: arm a fault point with ``crash_at`` (the attempt stops dead there, as if its worker
died), let time pass with ``fast_forward`` (the recovery sweep finds the crashed run and sends
it on, timers come due), then check how the run ended and what happened how often.

The last test does it for real: ``celery worker`` processes on RabbitMQ and PostgreSQL (the
pytest plugin's ``durable_postgres_url`` and ``durable_workers``; skipped unless
CELERY_DURABLE_TEST_PG names a PostgreSQL admin URL), one SIGKILLed right after a commit.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from celery import Celery

from celery_durable import Durable, Graph, Saga, Status
from celery_durable.faults import crash_at
from celery_durable.testing import (
    assert_committed_once,
    assert_compensated_in_order,
    assert_once_per_key,
    assert_status,
    embedded_app,
    fast_forward,
    in_process_worker,
    waiting_for,
)
from celery_durable.worker_processes import WorkerProcesses
from examples import order_app

STEPS = ["reserve", "charge", "ship"]


@dataclass
class Shop:
    durable: Durable
    orders: Saga
    returns: Graph


@pytest.fixture(scope="module")
def running_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    """One embedded shop for the module: each test uses orders of its own."""
    path = tmp_path_factory.mktemp("shop") / "shop.db"
    durable = Durable(embedded_app("shop-tests"), database_url=f"sqlite:///{path}")
    durable.migrate()
    _, orders = order_app.define(durable)
    returns = order_app.define_returns(durable, inspection=3600)
    with in_process_worker(durable):
        yield Shop(durable, orders, returns)
    durable.db.dispose()


@pytest.fixture
def shop(running_shop: Shop) -> Shop:
    order_app.payments.__init__()  # a fresh payment provider for each test
    return running_shop


def test_a_crash_before_the_charge_commits_charges_once(shop: Shop) -> None:
    with crash_at("before_commit", "charge") as crash:
        run = shop.orders.delay(order_id="o-1", amount=100)
        assert crash.crashed.wait(5)
    # The charge ran, its commit did not: after stale_after the sweep runs it again.
    fast_forward(shop.durable, shop.durable.settings.stale_after)
    run.wait(timeout=5)
    assert_status(run, Status.SUCCEEDED)
    assert_committed_once(run, STEPS)
    assert len(order_app.payments.requests) == 2  # asked twice, with one idempotency key,
    assert_once_per_key(order_app.payments.charges)  # charged once


def test_a_crash_after_the_reservation_commits_does_not_reserve_again(shop: Shop) -> None:
    with crash_at("after_commit", "reserve") as crash:
        run = shop.orders.delay(order_id="o-2", amount=100)
        assert crash.crashed.wait(5)
    fast_forward(shop.durable, shop.durable.settings.stale_after)
    run.wait(timeout=5)
    assert_status(run, Status.SUCCEEDED)
    assert_committed_once(run, STEPS)
    assert order_app.payments.requests == order_app.payments.charges


def test_a_crash_during_a_compensation_undoes_the_step_once(shop: Shop) -> None:
    with crash_at("compensation", "reserve") as crash:
        run = shop.orders.delay(order_id="o-3", amount=5_000)  # over the card limit: declined
        assert crash.crashed.wait(5)
    fast_forward(shop.durable, shop.durable.settings.stale_after)
    with pytest.raises(Exception, match="card declined"):
        run.wait(timeout=5)
    assert_status(run, Status.COMPENSATED)
    assert_compensated_in_order(run, ["reserve"])


def test_an_hour_long_inspection_passes_in_no_time(shop: Shop) -> None:
    run = shop.returns.delay(order_id="o-4", amount=120)
    run.send_event("parcel", {"tracking": "RT-4"})
    waiting_for(run, "sleep")
    fast_forward(shop.durable, 3600)
    assert waiting_for(run, "interrupt")["node"] == "refund"
    run.resume(update={"approved": True}, by="support@shop")
    assert run.wait(timeout=5).refunded == 120


def test_a_return_whose_parcel_never_comes_expires_after_a_day(shop: Shop) -> None:
    run = shop.returns.delay(order_id="o-5", amount=120)
    assert waiting_for(run, "event")["event"] == "parcel"
    fast_forward(shop.durable, 86400)
    final = run.wait(timeout=5)
    assert (final.received, final.refunded) == (False, 0)


def test_a_worker_killed_right_after_the_charge_commits(
    durable_postgres_url: str, durable_workers: Callable[..., WorkerProcesses]
) -> None:
    broker = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    queue = f"shop-test-{uuid.uuid4().hex[:8]}"
    env = {
        "CELERY_BROKER_URL": broker,
        "CELERY_DURABLE_DATABASE_URL": durable_postgres_url,
        "SHOP_QUEUE": queue,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    client = Celery("shop-client", broker=broker)
    client.conf.task_default_queue = queue
    durable = Durable(client, durable_postgres_url)
    durable.migrate()
    _, orders = order_app.define(durable)
    workers = durable_workers("examples.order_app", env)
    doomed = workers.start(queue, extra_env={"CELERY_DURABLE_FAULT": "after_commit:charge"})
    try:
        run = orders.delay(order_id="o-9", amount=100)
        assert doomed.wait_exit(timeout=60) != 0  # SIGKILLed itself after charge committed
        workers.start(queue)  # the unacked message comes back to this one: a replay
        run.wait(timeout=60)
        assert_status(run, Status.SUCCEEDED)
        assert_committed_once(run, STEPS)
    finally:
        with client.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
        durable.db.dispose()
