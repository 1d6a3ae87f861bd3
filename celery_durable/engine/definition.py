"""What the engine reads of a graph and its nodes: frozen data the builder
(``graphs/builder.py``) makes, never the decorator that made it.

A definition is taken of a whole graph that checked out, and nothing changes it afterwards:
a node task reads the same definition for as long as the graph is not redefined, and a graph
changed while runs are in flight gives a new definition, with a new fingerprint, rather than
changing the one those runs read. The saga decisions read these through the protocols of
``saga/shape.py``, which they satisfy.

A run is pinned to the version of its graph that started it: the version the graph declares,
else a short form of its fingerprint, so that any change of structure is a new version and a
change of node code alone is not. ``Catalog`` finds a run's definition by graph and version.
"""

from __future__ import annotations

import hashlib
import json
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel

from celery_durable.policies.limits import Limit, RateLimit
from celery_durable.policies.retry import RetryPolicy
from celery_durable.saga.shape import Router

OnFailure = Literal["fail", "compensate", "intervene"]
# While a node's breaker is open: wait in the database, or fail the attempt with CircuitOpen.
WhenOpen = Literal["wait", "fail"]
DEFAULT_MAX_VISITS = 1000
# Hex digits of the fingerprint that name a version the graph does not declare.
FINGERPRINT_VERSION_LENGTH = 12
# An undo should not give up easily: it retries for a long time, backing off.
DEFAULT_COMPENSATION_RETRY = RetryPolicy(
    max_attempts=10, initial_delay=1.0, backoff=2.0, max_delay=60.0, jitter=True
)


@dataclass(frozen=True, slots=True)
class NodeDefinition:
    """A node as the engine runs it: the user's function and every option it was declared with.

    ``interrupt_before``/``interrupt_after``: human approval, the run waits before this node
    runs or before what follows it. ``breaker``, ``rate``, ``concurrency``: flow control
    (engine/admission.py). ``max_visits``: visits of this node in one run before the run
    fails, a runaway loop's end.
    """

    name: str
    fn: Callable[..., Any]
    task_name: str
    wants_context: bool
    retry: RetryPolicy
    timeout: float | None = None
    queue: str | None = None
    interrupt_before: bool = False
    interrupt_after: bool = False
    compensator: Callable[..., Any] | None = None
    compensator_wants_context: bool = False
    compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY
    breaker: str | None = None
    when_open: WhenOpen = "wait"
    rate: RateLimit | None = None
    concurrency: Limit | None = None
    max_visits: int = DEFAULT_MAX_VISITS

    @property
    def compensation_task_name(self) -> str:
        return f"{self.task_name}.compensate"


Branch = tuple[Router, tuple[str, ...] | None]


# Compared by identity (eq=False): field by field would compare every node's function, and the
# read-only mappings would make it unhashable.
@dataclass(frozen=True, slots=True, eq=False)
class GraphDefinition:
    """A whole graph as the engine runs it, with its fingerprint (recorded on every execution).

    The mappings are copied behind read-only views when the definition is made, so the
    builder can go on changing its own without touching a definition already taken.
    ``concurrency`` bounds running executions per key, taken at the entry node and held to
    the end; ``upgrader`` fits a stored state the state model no longer accepts.
    """

    name: str
    state: type[BaseModel]
    entry_node: str
    nodes: Mapping[str, NodeDefinition]
    edges: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    joins: Mapping[str, frozenset[str]] = field(default_factory=dict)
    branches: Mapping[str, Branch] = field(default_factory=dict)
    on_failure: OnFailure = "fail"
    concurrency: Limit | None = None
    reducers: Mapping[str, Callable[[Any, Any], Any]] = field(default_factory=dict)
    upgrader: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    declared_version: str | None = None
    # Runs keep their newest this many checkpoints (engine/compaction.py); None: all. Not
    # part of the shape: it changes what is stored, never where a run goes.
    keep_checkpoints: int | None = None
    fingerprint: str = field(init=False)
    version: str = field(init=False)

    def __post_init__(self) -> None:
        for name in ("nodes", "edges", "joins", "branches", "reducers"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        fingerprint = hashlib.sha256(json.dumps(self.shape(), sort_keys=True).encode())
        object.__setattr__(self, "fingerprint", fingerprint.hexdigest())
        version = self.declared_version or self.fingerprint[:FINGERPRINT_VERSION_LENGTH]
        object.__setattr__(self, "version", version)

    def validate(self) -> str:
        """The fingerprint: a definition is only ever taken of a graph that checked out."""
        return self.fingerprint

    def shape(self) -> dict[str, Any]:
        """The structure a run's path depends on: nodes with the options that route or stop
        it, edges, joins, branches' declared paths, the failure policy. Hashed into the
        fingerprint, and kept by each worker (``durable versions``) so that two versions can
        be compared; node code, retries and timeouts are not in it."""
        return {
            "entry": self.entry_node,
            "nodes": {name: _routing(node) for name, node in sorted(self.nodes.items())},
            "edges": {k: sorted(v) for k, v in sorted(self.edges.items())},
            "joins": {k: sorted(v) for k, v in sorted(self.joins.items())},
            "branches": {k: sorted(v[1] or ["*"]) for k, v in sorted(self.branches.items())},
            "on_failure": self.on_failure,
        }


def _routing(node: NodeDefinition) -> dict[str, Any]:
    """What of a node's options decides where its message goes and where the run stops."""
    options: dict[str, Any] = {}
    if node.queue is not None:
        options["queue"] = node.queue
    if node.interrupt_before:
        options["interrupt_before"] = True
    if node.interrupt_after:
        options["interrupt_after"] = True
    return options


class Catalog(Mapping[str, GraphDefinition]):
    """The graphs a process has, by name: each name's newest version (what new runs start
    on), and through ``at`` every version registered side by side."""

    @abstractmethod
    def at(self, name: str, version: str | None) -> GraphDefinition | None:
        """The definition of ``name`` at ``version`` here, or None; version None (a run
        started before runs were pinned) is the newest."""

    @abstractmethod
    def versions(self, name: str) -> list[GraphDefinition]:
        """Every version of ``name`` here, oldest registered first."""

    def every(self) -> Iterator[GraphDefinition]:
        """Every version of every graph."""
        for name in self:
            yield from self.versions(name)
