"""Hooks are guests: one that raises is logged and changes nothing else, and chained hooks
each get every event without forwarding it by hand."""

from __future__ import annotations

import logging

import pytest
from pydantic import BaseModel

from celery_durable import Durable, Hooks, Status
from celery_durable.model.records import Commit


class Count(BaseModel):
    n: int = 0


class Broken(Hooks):
    def node_committed(self, graph: str, node: str, commit: Commit) -> None:
        raise RuntimeError("the metrics backend is down")

    def execution_finished(self, execution_id: str, graph: str, status: Status) -> None:
        raise RuntimeError("the alerting backend is down")


class Seen(Hooks):
    def __init__(self, inner: Hooks | None = None) -> None:
        self.inner = inner
        self.events: list[tuple[str, str]] = []

    def node_committed(self, graph: str, node: str, commit: Commit) -> None:
        self.events.append(("committed", node))

    def execution_finished(self, execution_id: str, graph: str, status: Status) -> None:
        self.events.append(("finished", str(status)))


def test_a_hook_that_raises_before_hand_on_does_not_stall_the_run(
    durable: Durable, worker, caplog: pytest.LogCaptureFixture
) -> None:
    # Given hooks that raise at every commit and at the end, in front of hooks that record
    last = Seen()
    durable.hooks = Broken()
    durable.hooks.inner = last
    g = durable.graph("guests", state=Count)

    @g.node
    def a(s: Count) -> dict[str, int]:
        return {"n": s.n + 1}

    @g.node
    def b(s: Count) -> dict[str, int]:
        return {"n": s.n + 1}

    g.entry(a)
    g.edge(a, b)
    # When a run goes through both nodes
    with caplog.at_level(logging.ERROR, logger="celery_durable.hooks"), worker():
        final = g.delay().wait(timeout=10)
    # Then it finished, the hooks behind the broken one saw everything, and the failures
    # were logged once per event
    assert final.n == 2
    assert last.events == [("committed", "a"), ("committed", "b"), ("finished", "succeeded")]
    failures = [r for r in caplog.records if "hook Broken." in r.getMessage()]
    assert len(failures) == 3


def test_chained_hooks_get_each_event_once_in_order() -> None:
    inner = Seen()
    outer = Seen(inner=inner)
    outer.execution_finished("e1", "g", Status.FAILED)
    assert outer.events == inner.events == [("finished", "failed")]
