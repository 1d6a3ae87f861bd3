"""Inline successors: a node that follows on the same queue runs in the same task, after the
commit of the one before, and a redelivered message finds what its inline runs committed."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from celery import Celery
from celery.signals import task_prerun
from pydantic import BaseModel

from celery_durable import Durable, Hooks, Status
from celery_durable.engine import node_run as node_module
from celery_durable.engine.base import Base
from celery_durable.engine.node_run import NodeRun
from celery_durable.graphs.builder import Graph
from celery_durable.model.cursor import Cursor
from celery_durable.testing import in_process_worker

NODES = ("a", "b", "c", "d", "e")


class Trail(BaseModel):
    trail: list[str] = []


class Timed(Hooks):
    def __init__(self) -> None:
        self.attempts: list[str] = []

    def attempt_finished(self, graph: str, node: str, kind: str, seconds: float) -> None:
        self.attempts.append(node)


def chain(durable: Durable, name: str = "chain", **options: dict[str, Any]) -> Graph:
    """a -> b -> c -> d -> e, each appending its name; ``options[node]`` go to @g.node."""
    g = durable.graph(name, state=Trail)
    for node in NODES:
        g.node(**options.get(node, {}))(appender(node))
    g.entry("a")
    for a, b in itertools.pairwise(NODES):
        g.edge(a, b)
    return g


def appender(node: str) -> Any:
    def fn(s: Trail) -> dict[str, list[str]]:
        return {"trail": [*s.trail, node]}

    fn.__name__ = node
    return fn


@contextmanager
def messages(app: Celery) -> Iterator[list[str]]:
    """Node task messages the worker received for graphs named chain, by node."""
    seen: list[str] = []

    def record(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app and sender.name.startswith("durable.chain."):
            seen.append(sender.name.rsplit(".", 1)[1])

    task_prerun.connect(record, weak=False)
    try:
        yield seen
    finally:
        task_prerun.disconnect(record)


def inline_flags(run: Any) -> list[tuple[str, bool]]:
    return [(cp.node, bool((cp.meta or {}).get("inline"))) for cp in run.history()[1:]]


def test_a_chain_runs_in_one_task_and_commits_every_node(durable: Durable, worker) -> None:
    timed = durable.hooks = Timed()
    g = chain(durable)
    with messages(durable.app) as seen, worker():
        run = g.delay()
        assert run.wait(timeout=10).trail == list(NODES)
    assert seen == ["a"]
    assert [(cp.kind, cp.node) for cp in run.history()] == [("start", "")] + [
        ("node", n) for n in NODES
    ]
    assert inline_flags(run) == [("a", True), ("b", True), ("c", True), ("d", True), ("e", False)]
    assert timed.attempts == list(NODES)


def test_inline_nodes_zero_publishes_every_node(app: Celery, sqlite_url: str) -> None:
    durable = Durable(app, database_url=sqlite_url, inline_nodes=0)
    durable.migrate()
    g = chain(durable)
    with messages(app) as seen, in_process_worker(durable):
        run = g.delay()
        assert run.wait(timeout=10).trail == list(NODES)
    assert seen == list(NODES)
    assert not any(flag for _, flag in inline_flags(run))
    durable.db.dispose()


def test_inline_nodes_caps_how_many_run_in_a_row(app: Celery, sqlite_url: str) -> None:
    durable = Durable(app, database_url=sqlite_url, inline_nodes=2)
    durable.migrate()
    g = chain(durable)
    with messages(app) as seen, in_process_worker(durable):
        assert g.delay().wait(timeout=10).trail == list(NODES)
    assert seen == ["a", "d"]  # a runs b and c inline; d is published and runs e
    durable.db.dispose()


def test_a_timeout_runs_inline_another_queue_gets_a_message_of_its_own(
    durable: Durable,
) -> None:
    g = chain(durable, c={"timeout": 30.0}, e={"queue": "elsewhere"})
    queues = [durable.app.conf.task_default_queue, "elsewhere"]
    with messages(durable.app) as seen, in_process_worker(durable, queues=queues):
        run = g.delay()
        assert run.wait(timeout=10).trail == list(NODES)
    # c's timeout is the engine's, per node: c runs inline; d -> e: e names another queue.
    assert seen == ["a", "e"]
    flags = inline_flags(run)
    assert flags == [("a", True), ("b", True), ("c", True), ("d", False), ("e", False)]


def test_a_node_routed_elsewhere_by_task_routes_is_published(app: Celery, sqlite_url: str) -> None:
    durable = Durable(app, database_url=sqlite_url)
    durable.migrate()
    g = chain(durable)
    app.conf.task_routes = {"durable.chain.c": {"queue": "elsewhere"}}
    queues = [app.conf.task_default_queue, "elsewhere"]
    with messages(app) as seen, in_process_worker(durable, queues=queues):
        assert g.delay().wait(timeout=10).trail == list(NODES)
    # b -> c: c goes elsewhere; c -> d: d goes back to the default queue; d runs e inline.
    assert seen == ["a", "c", "d"]
    durable.db.dispose()


def test_an_app_wide_time_limit_stops_inlining(durable: Durable, worker) -> None:
    durable.app.conf.task_soft_time_limit = 600
    g = chain(durable)
    with messages(durable.app) as seen, worker():
        assert g.delay().wait(timeout=10).trail == list(NODES)
    assert seen == list(NODES)


def test_a_rate_limited_node_gets_a_message_of_its_own(durable: Durable, worker) -> None:
    g = chain(durable)
    durable.app.tasks["durable.chain.c"].rate_limit = "100/s"
    with messages(durable.app) as seen, worker():
        assert g.delay().wait(timeout=10).trail == list(NODES)
    assert seen == ["a", "c", "d"]  # b -> c and c -> d: c's task has a rate limit


def test_past_the_time_budget_nodes_are_published(
    durable: Durable, worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_module, "INLINE_SECONDS", 0.0)
    g = chain(durable)
    with messages(durable.app) as seen, worker():
        assert g.delay().wait(timeout=10).trail == list(NODES)
    assert seen == list(NODES)


def test_a_fan_out_publishes_each_branch_and_the_join_runs_inline(durable: Durable, worker) -> None:
    g = durable.graph("chain", state=Trail)

    @g.node
    def a(s: Trail) -> None:
        return None

    @g.node
    def b(s: Trail) -> dict[str, list[str]]:
        return {"trail": ["b"]}

    @g.node
    def c(s: Trail) -> None:
        return None

    @g.node
    def d(s: Trail) -> None:
        return None

    g.entry(a)
    g.edge(a, [b, c])
    g.edge([b, c], d)
    with messages(durable.app) as seen, worker():
        run = g.delay()
        assert run.wait(timeout=10).trail == ["b"]
    assert sorted(seen) == ["a", "b", "c"]
    flags = dict(inline_flags(run))
    assert flags["a"] is False
    assert sorted([flags["b"], flags["c"]]) == [False, True]  # the one that completes the join


def test_a_redelivered_message_dispatches_what_its_inline_runs_left_due(
    durable: Durable, worker
) -> None:
    """The worker died after the inline b committed, before c ran: the redelivered message of
    a replays a, finds b committed, and publishes c as a recovered copy."""
    g = chain(durable)
    run = g.delay()  # a's message waits in the in-memory queue
    base = Base(0, {"trail": []}, Cursor.start("a"))
    first = NodeRun(durable.runtime, g, "a", run.id, 1, base)
    assert first.execute() == "committed"
    assert first.successor is not None and first.successor.name == "b"
    assert first.successor.execute() == "committed"  # then the process "dies"

    redelivered = NodeRun(durable.runtime, g, "a", run.id, 1, base, redelivered=True)
    assert redelivered.execute() == "replayed"
    with worker():
        assert run.wait(timeout=10).trail == list(NODES)
    assert [cp.node for cp in run.history()] == ["", *NODES]
    assert run.status == Status.SUCCEEDED
    # c came as a recovered copy: it was counted as a redelivery of its visit.
    assert durable.visits.get(run.id, "node", "c", 1).redeliveries == 1
