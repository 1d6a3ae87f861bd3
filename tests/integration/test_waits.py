"""Durable waits on real RabbitMQ + PostgreSQL + worker subprocesses: a waiting run holds no
worker, survives SIGKILL while it waits and just after it wakes, and commits nothing twice."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from celery_durable import Compensated, ExecutionFailed, Status
from tests.integration.app import DurableApp
from tests.integration.harness import Workers, assert_one_checkpoint_per_visit, ledger_lines
from tests.waiting import wait_for, waiting_kind

pytestmark = pytest.mark.integration


def lines(ledger: Path, execution_id: str, *what: str) -> list[list[str]]:
    return [
        ln
        for ln in ledger_lines(ledger)
        if ln[0] == execution_id and ln[1 : 1 + len(what)] == list(what)
    ]


def test_every_wait_survives_sigkill_while_waiting_and_just_after_waking(
    durable: DurableApp, workers: Workers, ledger_path: Path
) -> None:
    # Given a run that made its label, then sleeps 4 s, on a worker that is then killed
    first = workers.start()
    run = durable.durable.start(durable.errand, {"sleep": 4})
    wait_for(lambda: waiting_kind(run) == "sleep", 30, what="the sleep")
    first.kill()
    # When the next worker wakes it and dies right after the wake commit, before dispatching
    doomed = workers.start(extra_env={"CELERY_DURABLE_FAULT": "after_wake:prepare"})
    assert doomed.wait_exit(timeout=30) != 0
    assert run.status == Status.RUNNING and run.waiting_on is None
    # Then a third worker's sweep finds the woken visit stale and runs it: it waits for paid
    workers.start()
    wait_for(lambda: waiting_kind(run) == "event", 60, what="event")
    run.send_event("paid", {"amount": 30}, idempotency_key="psp-1")
    run.send_event("paid", {"amount": 30}, idempotency_key="psp-1")
    wait_for(lambda: waiting_kind(run) == "interrupt", 30, what="approval")
    assert lines(ledger_path, run.id, "ship") == []
    run.resume(update={"approved": True}, by="ops", reason="paid and labelled")
    final = run.wait(timeout=60)
    # Each fact committed once; the step before the sleep ran once; ship ran once
    assert final.shipped is True and final.paid == 30 and final.label.startswith("L-")
    assert final.checked == 900  # the child run squared what was paid
    assert [c.status for c in run.children()] == [Status.SUCCEEDED]
    assert_one_checkpoint_per_visit(run.history())
    assert len(lines(ledger_path, run.id, "label", "made")) == 1
    assert len(lines(ledger_path, run.id, "ship", "start")) == 1
    kinds = [(str(cp.kind), cp.node) for cp in run.history()]
    assert kinds.count(("wait", "prepare@0")) == 1 and kinds.count(("wake", "prepare@0")) == 1
    for woken in ("prepare@1", "prepare@2", "ship@before"):
        assert kinds.count(("wake", woken)) == 1


def test_sleeping_runs_hold_no_worker_slot(durable: DurableApp, workers: Workers) -> None:
    # Given one worker process that runs one task at a time
    workers.start(concurrency=1)
    runs = 300
    # When 300 runs each sleep 2 s (held slots would take 600 s one after another)
    started = [durable.durable.start(durable.nap, {"sleep": 2}) for _ in range(runs)]
    last_start = time.time()
    finals = [run.wait(timeout=120) for run in started]
    # Then they all finish within 2 s and a few timer and sweep rounds of the last start
    assert all(run.status == Status.SUCCEEDED for run in started)
    assert max(f.woke for f in finals) - last_start < 2 + 3 * 1.0 + 10


def test_map_over_a_thousand_children_on_one_worker(
    durable: DurableApp, workers: Workers, ledger_path: Path
) -> None:
    workers.start(concurrency=2)
    run = durable.durable.start(durable.batch, {"size": 1000})
    final = run.wait(timeout=240)
    assert final.results == [i * i for i in range(1000)]
    squares = Counter(ln[0] for ln in ledger_lines(ledger_path) if ln[1] == "square")
    assert len(squares) == 1000 and set(squares.values()) == {1}  # each child ran once
    assert len(run.children()) == 1000


def test_a_failing_child_cancel_and_compensation_reach_children(
    durable: DurableApp, workers: Workers, ledger_path: Path
) -> None:
    workers.start(concurrency=2)
    failing = durable.durable.start(durable.batch, {"size": 20, "fail_at": 7})
    with pytest.raises(ExecutionFailed) as failed:
        failing.wait(timeout=60)
    assert failed.value.error["type"] == "ChildFailed"
    assert f"{failing.id}.fan.1.m0.000007" in failed.value.error["message"]

    sleepy = durable.durable.start(durable.batch, {"size": 5, "sleep": 3600})
    wait_for(
        lambda: [c for c in sleepy.children() if c.status == Status.WAITING][4:], 60, what="naps"
    )
    sleepy.cancel(reason="batch withdrawn")
    assert {c.status for c in sleepy.children()} == {Status.CANCELLED}

    trip = durable.durable.start(durable.journey, {"n": 1})
    with pytest.raises(Compensated):
        trip.wait(timeout=60)
    (leg,) = trip.children()
    with pytest.raises(Compensated):
        leg.wait(timeout=60)
    undone = [ln[2] for ln in ledger_lines(ledger_path) if ln[1] == "undo"]
    assert sorted(undone) == ["journey", "leg"]
