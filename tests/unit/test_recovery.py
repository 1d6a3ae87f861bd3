"""The recovery sweep: long retries wait in the database until due, lost publishes are
re-dispatched once stale, runs of a definition that lost their next node stop loudly, and
concurrent sweeps claim each execution once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery
from pydantic import BaseModel

from celery_durable import Context, Durable, NeedsIntervention, RetryPolicy, Status
from celery_durable.engine.recovery import RecoveryReport, sweep
from celery_durable.errors import CannotUpgrade, GraphVersionMissing
from celery_durable.model.cursor import Cursor
from celery_durable.model.records import Commit, utcnow
from celery_durable.signals import intervention_required
from celery_durable.testing import embedded_app, in_process_worker
from tests.waiting import wait_for

STALE_AFTER = 0.2


class Flow(BaseModel):
    n: int = 0
    path: str = ""


@pytest.fixture
def make(app: Celery, sqlite_url: str) -> Iterator[Callable[..., Durable]]:
    """A Durable whose every retry delay waits in the database and whose runs go stale after
    ``stale_after`` s. The worker's own sweep runs once at its start and its timers never
    fire: a due retry waits for the test's own ``recover()``."""
    made: list[Durable] = []

    def build(stale_after: float = STALE_AFTER) -> Durable:
        durable = Durable(
            app,
            database_url=sqlite_url,
            stale_after=stale_after,
            eta_threshold=0.0,
            sweep_interval=3600,
            timer_interval=3600,
        )
        durable.migrate()
        made.append(durable)
        return durable

    yield build
    for durable in made:
        durable.db.dispose()


@pytest.fixture
def fast(make: Callable[..., Durable]) -> Durable:
    return make()


def purge(app: Celery) -> int:
    """Drop every message waiting in the app's queue: a publish the broker lost."""
    with app.connection_for_write() as conn:
        return int(conn.default_channel.queue_purge(app.conf.task_default_queue))


def two_nodes(durable: Durable, name: str, calls: list[str]) -> Any:
    g = durable.graph(name, state=Flow)

    @g.node
    def a(s: Flow) -> dict[str, object]:
        calls.append("a")
        return {"n": s.n + 1, "path": s.path + "a"}

    @g.node
    def b(s: Flow) -> dict[str, object]:
        calls.append("b")
        return {"n": s.n * 10, "path": s.path + "b"}

    g.entry(a)
    g.edge(a, b)
    return g


def later_graph(durable: Durable, name: str, attempts: list[int]) -> Any:
    """One node that fails its first attempt and is retried after 0.3 s (a database row)."""
    g = durable.graph(name, state=Flow)

    @g.node(retry=RetryPolicy(max_attempts=2, initial_delay=0.3, jitter=False))
    def flaky(s: Flow, ctx: Context) -> dict[str, object]:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("try later")
        return {"n": 1}

    g.entry(flaky)
    return g


def sleep_until_due(durable: Durable, execution_id: str) -> None:
    visit = durable.visits.get(execution_id, "node", "flaky", 1)
    assert visit is not None and visit.due_at is not None
    time.sleep(max((visit.due_at - utcnow()).total_seconds(), 0) + 0.05)


# -- (a) retries due in the database -------------------------------------------------------


def test_a_long_retry_waits_in_the_database_until_a_sweep_dispatches_it(
    make: Callable[..., Durable],
) -> None:
    fast = make(stale_after=30.0)  # the run never looks stale here: only the due row acts
    attempts: list[int] = []
    g = later_graph(fast, "later", attempts)
    with in_process_worker(fast):
        run = g.delay()

        def stored() -> bool:
            visit = fast.visits.get(run.id, "node", "flaky", 1)
            return visit is not None and visit.due_at is not None

        wait_for(stored, 5.0)
        visit = fast.visits.get(run.id, "node", "flaky", 1)
        assert visit is not None and visit.due_at is not None and visit.attempts == 1
        assert visit.due_at > utcnow()
        early = fast.recover()
        assert (early.retries, early.redispatched) == (0, 0)
        sleep_until_due(fast, run.id)
        assert attempts == [1]  # due now, yet nobody published it: it waits for a sweep
        assert run.status == Status.RUNNING
        report = fast.recover()
        assert (report.retries, report.redispatched) == (1, 0)
        assert run.wait(timeout=5).n == 1
    assert attempts == [1, 2]
    visit = fast.visits.get(run.id, "node", "flaky", 1)
    assert visit is not None and visit.due_at is None
    assert [(c.kind, c.node) for c in run.history()] == [("start", ""), ("node", "flaky")]


def test_a_due_retry_is_dispatched_once_even_when_the_run_is_also_stale(fast: Durable) -> None:
    attempts: list[int] = []
    g = later_graph(fast, "later_once", attempts)
    with in_process_worker(fast):
        run = g.delay()
        wait_for(lambda: fast.visits.get(run.id, "node", "flaky", 1) is not None, 5.0)
    purge(fast.app)  # the worker's shutdown messages
    sleep_until_due(fast, run.id)  # 0.3 s after the start: past stale_after as well
    report = fast.recover()  # no worker yet, so the retry cannot commit before the stale pass
    with in_process_worker(fast):
        run.wait(timeout=5)
    assert (report.retries, report.redispatched) == (1, 0)
    assert attempts == [1, 2]  # the bug runs a third attempt, numbered 1 again
    visit = fast.visits.get(run.id, "node", "flaky", 1)
    assert visit is not None and visit.due_at is None and visit.attempts == 1


# -- (b) a lost publish --------------------------------------------------------------------


def test_a_lost_publish_is_redispatched_once_the_run_is_stale(fast: Durable) -> None:
    calls: list[str] = []
    g = two_nodes(fast, "lost", calls)
    run = g.delay(n=1)  # no worker: the entry message waits in the queue...
    assert purge(fast.app) == 1  # ...and is lost
    fresh = fast.recover()
    assert fresh.redispatched == 0  # not stale yet
    time.sleep(STALE_AFTER + 0.1)
    report = fast.recover()
    assert report.redispatched >= 1
    with in_process_worker(fast):
        final = run.wait(timeout=10)
    assert (final.n, final.path) == (20, "ab")
    assert [(c.kind, c.node) for c in run.history()] == [
        ("start", ""), ("node", "a"), ("node", "b"),
    ]  # fmt: skip


def test_a_run_that_is_progressing_is_not_redispatched(fast: Durable) -> None:
    calls: list[str] = []
    g = two_nodes(fast, "busy", calls)
    run = g.delay(n=1)
    time.sleep(STALE_AFTER + 0.1)
    record = fast.store.get_execution(run.id)
    assert fast.store.touch(record, utcnow())  # a commit or another sweeper just moved it on
    report = fast.recover()
    assert report.redispatched == 0
    assert purge(fast.app) == 1  # only the original message is queued


# -- (c) an old definition whose next node is gone ----------------------------------------


def test_a_run_whose_version_no_live_worker_serves_needs_intervention(
    fast: Durable, sqlite_url: str
) -> None:
    # Version 1 routes a -> legacy; legacy's queue has no consumer, so the run stops there
    # when only version 2, which replaced legacy by modern, is deployed on the same database.
    v1 = fast.graph("order", state=Flow)

    @v1.node
    def a(s: Flow) -> dict[str, object]:
        return {"path": "a"}

    @v1.node(queue="retired")
    def legacy(s: Flow) -> None:
        return None

    v1.entry(a)
    v1.edge(a, legacy)
    with in_process_worker(fast):
        run = v1.delay()
        wait_for(lambda: fast.store.get_execution(run.id).cursor.frontier == [("legacy", 1)], 5.0)
    assert run.version == v1.version

    v2 = Durable(embedded_app("deploy-v2"), database_url=sqlite_url, stale_after=STALE_AFTER)
    try:
        g2 = v2.graph("order", state=Flow)
        g2.node(lambda s: {"path": s.path + "a"}, name="a")
        g2.node(lambda s: {"path": s.path + "m"}, name="modern")
        g2.entry("a")
        g2.edge("a", "modern")
        assert g2.version != v1.version
        time.sleep(STALE_AFTER + 0.1)
        report = v2.recover()
        assert report.stranded == 1 and report.redispatched == 0
        stuck = v2.get(run.id)
        assert stuck.status == Status.NEEDS_INTERVENTION
        with pytest.raises(NeedsIntervention) as raised:
            stuck.wait(timeout=1)
        error = raised.value.error
        assert error["type"] == "GraphVersionMissing" and error["node"] == "legacy"
        assert f"version {v1.version!r}" in error["message"]
        assert f"deployed: {g2.version}" in error["message"]
        assert "durable upgrade" in error["message"]
        last = stuck.history()[-1]
        assert (last.kind, last.node) == ("intervention", "legacy")
        row_version = stuck.refresh().version
        with pytest.raises(GraphVersionMissing):
            stuck.retry()  # this process does not define version 1: nothing changes
        with pytest.raises(CannotUpgrade, match="legacy"):
            stuck.upgrade(by="ops")  # version 2 has no node legacy
        assert stuck.refresh().version == row_version
        assert v2.recover().stranded == 0  # stranded once, not again on every sweep
    finally:
        v2.db.dispose()


def test_a_stranded_run_can_be_skipped_past_its_missing_node(fast: Durable) -> None:
    g = fast.graph("shrunk", state=Flow)
    g.node(lambda s: {"path": "a"}, name="a")
    g.entry("a")
    run = g.delay()
    purge(fast.app)
    record = fast.store.get_execution(run.id)
    fast.store.save(  # as if the definition that started the run had a node 'gone' next
        Commit(
            execution_id=run.id,
            expected_version=record.version,
            kind="node",
            node="a",
            visit=1,
            state={"n": 0, "path": "a"},
            cursor=Cursor(frontier=[("gone", 1)], visits={"a": 1, "gone": 1}),
            status=Status.RUNNING,
            output={"path": "a"},
        )
    )
    time.sleep(STALE_AFTER + 0.1)
    heard: list[str] = []

    def intervention(sender: Any, execution_id: str, **_: Any) -> None:
        heard.append(execution_id)

    intervention_required.connect(intervention)
    try:
        assert fast.recover().stranded == 1
    finally:
        intervention_required.disconnect(intervention)
    assert heard == [run.id]  # the signal, the hook and the interventions metric hear of it
    assert run.status == Status.NEEDS_INTERVENTION
    assert "gone" in run.error["message"] and "skip" in run.error["message"]
    run.skip("gone", reason="retired in v2")
    assert run.status == Status.SUCCEEDED


# -- (d) concurrent sweeps -----------------------------------------------------------------


def test_two_sweeps_at_once_redispatch_a_stale_execution_once(
    fast: Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    g = two_nodes(fast, "contended", calls)
    run = g.delay(n=1)
    assert purge(fast.app) == 1
    time.sleep(STALE_AFTER + 0.1)
    # Both sweepers read the same stale snapshot before either claims it.
    both_listed = threading.Barrier(2, timeout=5)
    list_stale = fast.store.list_stale

    def listed_together(*args: Any, **kwargs: Any) -> Any:
        found = list_stale(*args, **kwargs)
        both_listed.wait()
        return found

    monkeypatch.setattr(fast.store, "list_stale", listed_together)
    reports: list[RecoveryReport] = []
    threads = [
        threading.Thread(target=lambda: reports.append(sweep(fast.runtime))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(reports) == 2
    assert sorted(r.redispatched for r in reports) == [0, 1]
    assert purge(fast.app) == 1  # exactly one message for the entry node
    assert fast.store.get_execution(run.id).version == 0


def test_two_sweeps_at_once_claim_a_due_retry_once(fast: Durable) -> None:
    attempts: list[int] = []
    g = later_graph(fast, "due_once", attempts)
    with in_process_worker(fast):
        run = g.delay()
        wait_for(
            lambda: (
                (v := fast.visits.get(run.id, "node", "flaky", 1)) is not None
                and v.due_at is not None
            ),
            5.0,
        )
    purge(fast.app)  # the worker's shutdown messages
    sleep_until_due(fast, run.id)
    start = threading.Barrier(2, timeout=5)
    claimed: list[int] = []

    def claim() -> None:
        start.wait()
        claimed.append(len(fast.visits.claim_due(utcnow())))

    threads = [threading.Thread(target=claim) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(claimed) == [0, 1]
