"""Streams on real RabbitMQ + PostgreSQL + worker subprocesses: 20 runs at once, each read by
its own run.stream() and all by one stream of their graph, every checkpoint delivered once
and in order, a worker SIGKILLed mid-run included."""

from __future__ import annotations

import threading

import pytest

from celery_durable import Checkpoint, Execution
from celery_durable.engine.stream import StreamItem, stream_runs
from tests.integration.app import DurableApp
from tests.integration.harness import Workers, assert_one_checkpoint_per_visit
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

RUNS = 20


def seqs(items: list[StreamItem]) -> list[tuple[int, str, str]]:
    return [(i.seq, str(i.kind), i.node) for i in items if isinstance(i, Checkpoint)]


def test_20_concurrent_runs_stream_every_checkpoint_across_a_worker_kill(
    durable: DurableApp, workers: Workers
) -> None:
    doomed = workers.start(concurrency=2)
    workers.start(concurrency=2)
    # Given a stream of the graph opened before the runs start
    graph_items: list[StreamItem] = []
    graph_done = threading.Event()
    runs: list[Execution] = []

    def follow_graph() -> None:
        for item in stream_runs(durable.durable.runtime, ["chain"], timeout=120):
            graph_items.append(item)
            ended = {
                i.execution_id for i in graph_items if isinstance(i, Checkpoint) and i.node == "n5"
            }
            if runs and ended >= {run.id for run in runs}:
                graph_done.set()
                return

    threading.Thread(target=follow_graph, daemon=True).start()
    probe = durable.durable.start(durable.chain, {})
    wait_for(lambda: any(i.execution_id == probe.id for i in graph_items), 60, what="open")
    # When 20 runs start at once, each read by a stream of its own, and a worker dies mid-run
    job = {"sleep_at": "n3", "sleep": 1.0}
    runs.extend(durable.durable.start(durable.chain, job) for _ in range(RUNS))
    streamed: dict[str, list[StreamItem]] = {}
    errors: list[BaseException] = []

    def follow(run: Execution) -> None:
        try:
            streamed[run.id] = list(run.stream(timeout=120))
        except BaseException as exc:  # reported by the test, not lost in a thread
            errors.append(exc)

    readers = [threading.Thread(target=follow, args=(run,), daemon=True) for run in runs]
    for reader in readers:
        reader.start()
    wait_for(lambda: any(run.progress().done >= 2 for run in runs), 60, what="runs at n3")
    doomed.kill()
    for reader in readers:
        reader.join(timeout=150)
    assert graph_done.wait(60)
    # Then every stream ended with its run, holding its whole history in order, once
    assert errors == []
    for run in runs:
        history = run.history()
        assert_one_checkpoint_per_visit(history)
        expected = [(c.seq, str(c.kind), c.node) for c in history]
        assert [c[0] for c in expected] == list(range(len(expected)))
        assert seqs(streamed[run.id]) == expected
        assert seqs([i for i in graph_items if i.execution_id == run.id]) == expected
        assert run.state.trail == ["n1", "n2", "n3", "n4", "n5"]
