"""The app the version tests' workers run (``celery -A tests.integration.versions_app``).

Two versions of each graph, as a deploy that changed an edge and inserted a node leaves them:
version "1" is a → b → c, version "2" is a → x → c, one state model. ``DEPLOYED_VERSIONS``
(comma-separated, default "1,2") says which versions this process defines: a worker started
with "1" is the old code, with "2" the new code, with "1,2" the code that keeps v1 while its
runs drain. Graph "deploy" waits for an approval before its entry node ``a`` (a node both
versions have, so a parked run may be moved from one version to the other); graph "rollout"
is the same structure without the approval, for runs that go straight through.

Configured by environment like tests/integration/app.py (CELERY_BROKER_URL,
CELERY_DURABLE_DATABASE_URL, DURABLE_TEST_QUEUE, DURABLE_TEST_LEDGER). Every node run appends
``<execution> <node> <visit> <version it is defined in> <pid>`` to the ledger, so a test can
count node runs per run and see which version's code ran them; the ``intervention_required``
signal, received in the worker, appends ``signal <execution> <node> <pid>``.
"""

from __future__ import annotations

import itertools
import os
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from pydantic import BaseModel

from celery_durable import Context, Durable, Graph, intervention_required

DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"
VERSIONS_ENV = "DEPLOYED_VERSIONS"
# Each version's path through the graph: what a run pinned to it must take.
PATHS: dict[str, tuple[str, ...]] = {"1": ("a", "b", "c"), "2": ("a", "x", "c")}
APPROVED = "deploy"  # waits for an approval before a
STRAIGHT = "rollout"  # no approval
HOLD_MAX = 30.0


def ledger(*parts: object) -> None:
    path = os.environ.get("DURABLE_TEST_LEDGER")
    if path:
        with open(path, "a") as out:
            out.write(" ".join(str(p) for p in parts) + "\n")


class Trail(BaseModel):
    """The nodes a run went through; ``sleep``: seconds each node takes; ``hold``: node ->
    a file, the node waits (up to HOLD_MAX s) while it exists."""

    path: list[str] = []
    sleep: float = 0.0
    hold: dict[str, str] = {}


@dataclass(frozen=True)
class VersionsApp:
    """One Celery app with its Durable and each graph's versions, by version."""

    app: Celery
    durable: Durable
    queue: str
    deploy: dict[str, Graph]
    rollout: dict[str, Graph]


def deployed() -> tuple[str, ...]:
    """The versions named by ``DEPLOYED_VERSIONS`` (default: all), oldest first."""
    named = os.environ.get(VERSIONS_ENV, ",".join(PATHS))
    versions = tuple(v.strip() for v in named.split(",") if v.strip())
    unknown = sorted(set(versions) - set(PATHS))
    if unknown:
        raise ValueError(f"{VERSIONS_ENV}: no version {unknown}; known: {sorted(PATHS)}")
    return tuple(v for v in PATHS if v in versions)


def build(versions: Sequence[str] | None = None) -> VersionsApp:
    """A fresh app defining ``versions`` (default: ``deployed()``), the newest last."""
    queue = os.environ.get("DURABLE_TEST_QUEUE", "durable-tests")
    app = Celery("durable_versions", broker=os.environ.get("CELERY_BROKER_URL", DEFAULT_BROKER))
    app.conf.update(
        task_default_queue=queue,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    durable = Durable(app)
    _durables.add(durable)
    chosen = [v for v in PATHS if v in (versions or deployed())]
    return VersionsApp(
        app=app,
        durable=durable,
        queue=queue,
        deploy={v: _define(durable, APPROVED, v, approval=True) for v in chosen},
        rollout={v: _define(durable, STRAIGHT, v, approval=False) for v in chosen},
    )


def _define(durable: Durable, name: str, version: str, approval: bool) -> Graph:
    """``PATHS[version]`` as graph ``name`` at ``version``; with ``approval``, the run waits
    for one before its first node."""
    graph = durable.graph(name, state=Trail, version=version)
    first, *rest = PATHS[version]
    graph.node(_node(first, version), interrupt_before=approval)
    for node in rest:
        graph.node(_node(node, version))
    graph.entry(first)
    for here, there in itertools.pairwise(PATHS[version]):
        graph.edge(here, there)
    return graph


def _node(name: str, version: str) -> Callable[[Trail, Context], dict[str, Any]]:
    def node(state: Trail, ctx: Context) -> dict[str, Any]:
        ledger(ctx.execution_id, name, ctx.visit, version, os.getpid())
        if state.sleep:
            time.sleep(state.sleep)
        held_until = time.monotonic() + HOLD_MAX
        while name in state.hold and os.path.exists(state.hold[name]):
            if time.monotonic() > held_until:
                raise TimeoutError(f"{name} held by {state.hold[name]} for {HOLD_MAX}s")
            time.sleep(0.02)
        return {"path": [*state.path, name]}

    node.__name__ = name
    return node


def _on_intervention(sender: object = None, **kwargs: object) -> None:
    """The worker received ``intervention_required``: say so in the ledger (the alert)."""
    if sender in _durables:
        ledger("signal", kwargs.get("execution_id"), kwargs.get("step"), os.getpid())


# Only Durables built here write the ledger: other tests send the signal in their process too.
_durables: weakref.WeakSet[Durable] = weakref.WeakSet()
intervention_required.connect(_on_intervention, weak=False)


# What `celery -A tests.integration.versions_app worker` runs.
_default = build()
app = _default.app
durable = _default.durable
