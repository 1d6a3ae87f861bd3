"""Crashes on real RabbitMQ + PostgreSQL + worker subprocesses: a node visit commits once.

Each test kills workers (SIGKILL of the process group, a machine failure) or duplicates
messages at a chosen point, then checks the two things durability promises: the run ends
right, and every (kind, node, visit) was committed exactly once, whatever ran twice.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from celery_durable import Execution, ExecutionFailed, Status
from celery_durable.engine.base import Base
from celery_durable.model.cursor import Cursor
from tests.integration.app import CHAIN_NODES, DurableApp
from tests.integration.harness import (
    HAND_ON,
    Workers,
    assert_one_checkpoint_per_visit,
    chain_events,
    ledger_lines,
    settle,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

RUN_TIMEOUT = 60.0


def check_chain(ex: Execution) -> None:
    """Succeeded, count 5, trail n1..n5, one start and one checkpoint per node visit."""
    state: Any = ex.wait(timeout=RUN_TIMEOUT)
    assert ex.status == Status.SUCCEEDED
    assert state.count == 5
    assert state.trail == list(CHAIN_NODES)
    history = ex.history()
    assert_one_checkpoint_per_visit(history)
    assert [(cp.kind, cp.node, cp.visit) for cp in history] == [
        ("start", "", 0),
        *[("node", name, 1) for name in CHAIN_NODES],
    ]


def ran_inline(ex: Execution) -> bool:
    """Whether n1's message also ran the next node (n1's checkpoint says so)."""
    return any(cp.node == "n1" and (cp.meta or {}).get("inline") for cp in ex.history())


def duplicate_entry(d: DurableApp, ex: Execution) -> None:
    """Publish the entry message again, exactly as start() published it."""
    started = d.durable.store.load(ex.id, 0)  # the start checkpoint: the state at version 0
    d.durable.runtime.dispatcher.dispatch(
        "chain", "n1", 1, ex.id, Base(0, started.state, Cursor.start("n1"))
    )


@pytest.mark.parametrize("hand_on", sorted(HAND_ON))
def test_kill_while_node_runs_reruns_it(
    durable: DurableApp, workers: Workers, ledger_path: Path, hand_on: str
) -> None:
    """(a) SIGKILL during n2, before its commit: n2 runs again on a new worker."""
    first = workers.start(extra_env=HAND_ON[hand_on])
    ex = durable.durable.start(durable.chain, {"sleep_at": "n2", "sleep": 3})
    wait_for(lambda: chain_events(ledger_path, ex.id, "n2", "start"), 30, what="n2 to start")
    first.kill()
    assert [cp.node for cp in ex.history()] == ["", "n1"], "n2 must not have committed"
    assert ran_inline(ex) == (hand_on == "inline")
    workers.start(extra_env=HAND_ON[hand_on])
    check_chain(ex)
    settle(ledger_path)
    assert len(chain_events(ledger_path, ex.id, "n2", "start")) == 2
    assert len(chain_events(ledger_path, ex.id, "n2", "done")) == 1
    check_chain(ex)


@pytest.mark.parametrize("hand_on", sorted(HAND_ON))
def test_kill_after_commit_before_dispatch_does_not_rerun(
    durable: DurableApp, workers: Workers, ledger_path: Path, hand_on: str
) -> None:
    """(b) SIGKILL right after n2's commit, before n3 is published (or, inline, run): n2 is
    not run again."""
    fault = {"CELERY_DURABLE_FAULT": "after_commit:n2"}
    dying = workers.start(extra_env={**HAND_ON[hand_on], **fault})
    ex = durable.durable.start(durable.chain, {})
    assert dying.wait_exit(timeout=30) != 0
    assert [cp.node for cp in ex.history()] == ["", "n1", "n2"]
    assert ran_inline(ex) == (hand_on == "inline")
    assert not chain_events(ledger_path, ex.id, "n3", "start"), "died before n3 was dispatched"
    workers.start(extra_env=HAND_ON[hand_on])
    check_chain(ex)
    settle(ledger_path)
    assert len(chain_events(ledger_path, ex.id, "n2", "start")) == 1
    assert len(chain_events(ledger_path, ex.id, "n2", "done")) == 1
    check_chain(ex)


TERMINATE_OTHERS = text("""
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid()
""")


@pytest.mark.parametrize("hand_on", sorted(HAND_ON))
def test_database_connections_lost_mid_run(
    durable: DurableApp, workers: Workers, ledger_path: Path, hand_on: str
) -> None:
    """(f) Every database connection is cut while n3 runs, as a database restart would: n3's
    commit fails, n3 is published again and runs again, nothing committed is lost."""
    # One pool process: the one that runs n3 then holds the connection n1 and n2 committed
    # on (with two, n3's process may open its first connection only after the cut).
    workers.start(concurrency=1, extra_env=HAND_ON[hand_on])
    ex = durable.durable.start(durable.chain, {"sleep_at": "n3", "sleep": 2})
    wait_for(lambda: chain_events(ledger_path, ex.id, "n3", "start"), 30, what="n3 to start")
    with durable.durable.db.engine.connect() as conn:
        cut = conn.execute(TERMINATE_OTHERS).scalar_one()
    durable.durable.db.dispose()  # this process's connections were cut too
    assert cut >= 1, "the worker's connections must have been cut"
    check_chain(ex)
    assert ran_inline(ex) == (hand_on == "inline")
    settle(ledger_path)
    assert len(chain_events(ledger_path, ex.id, "n3", "start")) == 2, "n3's first commit failed"
    for node in ("n1", "n2", "n4", "n5"):
        assert len(chain_events(ledger_path, ex.id, node, "start")) == 1, f"{node} ran again"
    check_chain(ex)


def test_duplicate_message_commits_once(
    durable: DurableApp, workers: Workers, ledger_path: Path
) -> None:
    """(c) The entry message delivered twice: both copies run, one commits."""
    ex = durable.durable.start(durable.chain, {})
    duplicate_entry(durable, ex)
    workers.start()
    check_chain(ex)
    settle(ledger_path)
    assert len(chain_events(ledger_path, ex.id, "n1", "start")) == 2, "the duplicate ran"
    for node in CHAIN_NODES:
        assert len(chain_events(ledger_path, ex.id, node, "done")) >= 1
    check_chain(ex)


def raced(ledger: Path, execution_id: str) -> bool:
    """Both n1 attempts started, in different processes, before either finished."""
    lines = [line for line in ledger_lines(ledger) if line[0] == execution_id and line[1] == "n1"]
    kinds = [line[3] for line in lines]
    pids = {line[4] for line in lines if line[3] == "start"}
    return kinds[:2] == ["start", "start"] and len(pids) == 2


def test_two_workers_race_on_one_visit(
    durable: DurableApp, workers: Workers, ledger_path: Path
) -> None:
    """(d) Two workers run the same n1 visit at once: exactly one commit wins."""
    workers.start(concurrency=1, wait=False)
    workers.start(concurrency=1, wait=False)
    for worker in workers.started:
        worker.wait_ready()
    for _ in range(3):  # each worker holds one message (prefetch 1, -c 1): a race nearly always
        ex = durable.durable.start(durable.chain, {"sleep_at": "n1", "sleep": 1.0})
        duplicate_entry(durable, ex)
        check_chain(ex)
        settle(ledger_path)
        if raced(ledger_path, ex.id):
            break
    else:
        pytest.fail("three tries and the two n1 attempts never overlapped")
    assert len(chain_events(ledger_path, ex.id, "n1", "start")) == 2
    check_chain(ex)


def test_step_resumes_after_kill(durable: DurableApp, workers: Workers, ledger_path: Path) -> None:
    """(e) Killed at item ~61 of 100: the restart resumes there, committed items do not rerun."""
    first = workers.start()
    ex = durable.durable.start(durable.items, {"total": 100, "item_sleep": 0.05})
    wait_for(lambda: len(ledger_lines(ledger_path)) >= 61, 60, interval=0.002, what="item 60")
    first.kill()
    at_kill = len(ledger_lines(ledger_path))
    assert 61 <= at_kill <= 63, at_kill
    # An item's ledger line is written only after the previous item's step committed: every
    # item before the last one started is committed, the last one may or may not be.
    in_flight = at_kill - 1
    steps_before = [cp for cp in ex.history() if cp.kind == "step"]
    assert in_flight <= len(steps_before) <= in_flight + 1
    workers.start()
    state: Any = ex.wait(timeout=RUN_TIMEOUT)
    assert state.done == 100
    runs = Counter(int(line[2]) for line in ledger_lines(ledger_path) if line[1] == "item")
    assert sorted(runs) == list(range(100))
    again = {i: n for i, n in runs.items() if n > 1}
    assert set(again) <= {in_flight}, f"committed items ran again: {again}"
    assert all(n <= 2 for n in runs.values())
    history = ex.history()
    assert_one_checkpoint_per_visit(history)
    assert sorted(cp.node for cp in history if cp.kind == "step") == sorted(
        f"loop/item-{i}" for i in range(100)
    )
    assert [(cp.kind, cp.node) for cp in history if cp.kind != "step"] == [
        ("start", ""),
        ("node", "loop"),
    ]


def test_poison_message_fails_the_run(
    durable: DurableApp, workers: Workers, ledger_path: Path
) -> None:
    """(f) A node that kills its pool process every time: failed after the redelivery cap."""
    # billiard can take ~5 s to notice a dead pool child, so 4 crashes can outlast the 10 s
    # stale_after; the sweep would then publish a fresh copy whose first delivery (not a
    # redelivery) runs once more. Keep the sweep out: this test counts redeliveries.
    workers.start(
        extra_env={"CELERY_DURABLE_MAX_REDELIVERIES": "3", "CELERY_DURABLE_STALE_AFTER": "120"}
    )
    ex = durable.durable.start(durable.poison, {})
    with pytest.raises(ExecutionFailed) as failed:
        ex.wait(timeout=RUN_TIMEOUT)
    assert failed.value.error["type"] == "PoisonMessage"
    assert failed.value.node == "explode"
    assert ex.status == Status.FAILED
    assert ex.error is not None and ex.error["type"] == "PoisonMessage"
    settle(ledger_path)
    runs = [line for line in ledger_lines(ledger_path) if line[1] == "explode"]
    assert len(runs) == 4, "the first delivery and 3 redeliveries ran; the 4th did not"
    history = ex.history()
    assert_one_checkpoint_per_visit(history)
    assert [(cp.kind, cp.node, cp.visit) for cp in history] == [
        ("start", "", 0),
        ("failure", "explode", 1),
    ]


def test_kill_while_leased_node_runs_recovers_after_lease(
    durable: DurableApp, workers: Workers, ledger_path: Path
) -> None:
    """(g) SIGKILL during a node long enough to hold a lease: the redelivered copy steps aside
    for the (dead) lease holder, and the sweep re-dispatches once the lease has expired."""
    leases = {
        "CELERY_DURABLE_LEASE_AFTER": "0.5",
        "CELERY_DURABLE_LEASE_TTL": "3",
        "CELERY_DURABLE_STALE_AFTER": "5",
    }
    first = workers.start(extra_env=leases)
    ex = durable.durable.start(durable.chain, {"sleep_at": "n2", "sleep": 2.5})
    wait_for(lambda: chain_events(ledger_path, ex.id, "n2", "start"), 30, what="n2 to start")
    visits = durable.durable.visits

    def leased() -> bool:
        visit = visits.get(ex.id, "node", "n2", 1)
        return visit is not None and visit.lease_token > 0

    wait_for(leased, 5, interval=0.02, what="n2 to take its lease")
    first.kill()
    killed_at = time.monotonic()
    lease = visits.get(ex.id, "node", "n2", 1)
    assert lease is not None and lease.lease_expires_at is not None
    second = workers.start(extra_env=leases)
    check_chain(ex)
    settle(ledger_path)
    assert len(chain_events(ledger_path, ex.id, "n2", "start")) == 2
    assert len(chain_events(ledger_path, ex.id, "n2", "done")) == 1
    assert "steps aside" in second.output(), "the redelivered copy deferred to the lease"
    assert time.monotonic() - killed_at >= 2.5, "n2 ran again only after its lease expired"
    check_chain(ex)
