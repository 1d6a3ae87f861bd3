"""What alerts hang on: a run started, a node failed for good, a node slow, a run stuck (told
once while it stays stuck), and how long a crashed visit held its run up before it ran
again; each as a hook and as a Celery signal."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from kombu import Connection
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from celery_durable import Durable, Hooks, RetryPolicy, signals
from celery_durable.metrics import PrometheusHooks
from celery_durable.testing import in_process_worker

STALE_AFTER = 0.2
STUCK_AFTER = 0.5


class Job(BaseModel):
    nap: float = 0.0
    fail: bool = False


class Told(Hooks):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def execution_started(self, execution_id: str, graph: str, version: str | None) -> None:
        self.events.append(("started", execution_id, graph))

    def node_failed(self, execution_id: str, graph: str, node: str, error: dict[str, Any]) -> None:
        self.events.append(("failed", execution_id, node, error["type"]))

    def node_slow(self, execution_id: str, graph: str, node: str, seconds: float) -> None:
        self.events.append(("slow", execution_id, node, seconds))

    def execution_stuck(self, execution_id: str, graph: str, idle: float) -> None:
        self.events.append(("stuck", execution_id, idle))

    def recovery_lag(self, graph: str, node: str, seconds: float) -> None:
        self.events.append(("lag", node, seconds))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind]


@pytest.fixture
def told() -> Told:
    return Told()


@pytest.fixture
def durable(app: Celery, sqlite_url: str, told: Told) -> Iterator[Durable]:
    durable = Durable(
        app,
        database_url=sqlite_url,
        hooks=told,
        stale_after=STALE_AFTER,
        stuck_after=STUCK_AFTER,
        slow_node_after=0.05,
        eta_threshold=0.0,
        sweep_interval=3600,
        timer_interval=3600,
    )
    durable.migrate()
    g = durable.graph("job", state=Job)

    @g.node(retry=RetryPolicy(max_attempts=1))
    def work(state: Job) -> dict[str, object]:
        time.sleep(state.nap)
        if state.fail:
            raise LookupError("no such account")
        return {}

    g.entry(work)
    yield durable
    durable.db.dispose()


def test_started_slow_and_failed_for_good_are_told(durable: Durable, told: Told) -> None:
    sent: list[dict[str, Any]] = []

    def heard(sender: Any, **fields: Any) -> None:
        sent.append({k: v for k, v in fields.items() if k != "signal"})

    for signal in (signals.execution_started, signals.node_failed, signals.node_slow):
        signal.connect(heard, weak=False)
    try:
        with in_process_worker(durable):
            run = durable.start("job", {"fail": True}, execution_id="job-1")
            durable.start("job", {"fail": True}, execution_id="job-1")  # the same run
            with pytest.raises(Exception, match="no such account"):
                run.wait(timeout=10)
            durable.start("job", {"nap": 0.1}, execution_id="job-2").wait(timeout=10)
    finally:
        for signal in (signals.execution_started, signals.node_failed, signals.node_slow):
            signal.disconnect(heard)
    assert told.of("started") == [("started", "job-1", "job"), ("started", "job-2", "job")]
    assert told.of("failed") == [("failed", "job-1", "work", "LookupError")]
    ((_, slow, node, seconds),) = told.of("slow")
    assert (slow, node) == ("job-2", "work") and seconds >= 0.1
    assert {"execution_id": "job-1", "graph": "job", "version": run.version} in sent
    assert any(s.get("node") == "work" and s.get("seconds", 0) >= 0.1 for s in sent)
    assert any(s.get("error", {}).get("type") == "LookupError" for s in sent)


def test_a_stuck_run_is_told_once_while_it_stays_stuck(durable: Durable, told: Told) -> None:
    stuck: list[dict[str, Any]] = []
    signals.execution_stuck.connect(lambda sender, **f: stuck.append(f), weak=False)
    run = durable.graphs["job"].delay()  # no worker: it makes no progress
    time.sleep(STUCK_AFTER + 0.1)
    durable.recover()
    durable.recover()
    assert [e[1] for e in told.of("stuck")] == [run.id]
    assert told.of("stuck")[0][2] >= STUCK_AFTER
    assert [s["execution_id"] for s in stuck] == [run.id]


def test_a_visit_sent_again_after_its_worker_was_lost_reports_the_lag(
    durable: Durable, told: Told
) -> None:
    run = durable.graphs["job"].delay()
    with Connection(durable.app.conf.broker_url) as conn:  # the message is lost with its worker
        conn.default_channel.queue_purge(durable.app.conf.task_default_queue)
    time.sleep(STALE_AFTER + 0.1)
    assert durable.recover().redispatched == 1
    with in_process_worker(durable):
        run.wait(timeout=10)
    ((_, node, seconds),) = told.of("lag")
    assert node == "work" and seconds >= STALE_AFTER


def test_the_alert_metrics_count_what_the_hooks_tell(app: Celery, sqlite_url: str) -> None:
    registry = CollectorRegistry()
    durable = Durable(
        app, database_url=sqlite_url, hooks=PrometheusHooks(registry), slow_node_after=0.05
    )
    durable.migrate()
    g = durable.graph("metered", state=Job)

    @g.node(retry=RetryPolicy(max_attempts=1))
    def work(state: Job) -> dict[str, object]:
        time.sleep(state.nap)
        if state.fail:
            raise LookupError("no such account")
        return {}

    g.entry(work)
    with in_process_worker(durable):
        g.delay(nap=0.1).wait(timeout=10)
        with pytest.raises(Exception, match="no such account"):
            g.delay(fail=True).wait(timeout=10)
    value = registry.get_sample_value
    assert value("celery_durable_executions_started_total", {"graph": "metered"}) == 2
    assert value("celery_durable_slow_nodes_total", {"graph": "metered", "node": "work"}) == 1
    failed = {"graph": "metered", "node": "work", "error": "LookupError"}
    assert value("celery_durable_node_failures_total", failed) == 1
    durable.db.dispose()
