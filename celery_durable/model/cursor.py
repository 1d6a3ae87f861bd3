"""The cursor of a run through its graph: what is due, visit counters, arrivals at joins,
open waits and steps still to undo. Advanced by each commit (saga/coordinator.py).

The cursor is stored on the execution row and travels in every node message, so deciding
what follows a node needs no database read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from celery_durable.model.wait import AFTER, Visit, Wait
from celery_durable.status import Status

# A committed step still to undo: (node, visit, seq of its checkpoint).
Undo = tuple[str, int, int]


@dataclass(slots=True)
class Cursor:
    """Nodes due (with their visit numbers), visit counters, arrivals at joins, and, while a
    saga compensates, the committed steps still to undo, newest first, as (node, visit, seq).
    ``held`` are the due visits made ready while the run was paused: not dispatched yet, unlike
    the rest of the frontier, which is in flight. ``waits`` are the open waits by key: their
    visits (or, after an interrupt_after, the visits their node made ready) are not in flight.
    """

    frontier: list[Visit] = field(default_factory=list)
    visits: dict[str, int] = field(default_factory=dict)
    joins: dict[str, list[str]] = field(default_factory=dict)
    queue: str | None = None
    undo: list[Undo] = field(default_factory=list)
    held: list[Visit] = field(default_factory=list)
    waits: dict[str, Wait] = field(default_factory=dict)
    # A child run's parent: told when this run ends (it may wait for it).
    parent: str | None = None
    # The message priority (0-9) of every node of the run, on queues declared with one.
    priority: int | None = None
    # The version of its graph the run is pinned to (None: started before runs were pinned).
    # Carried by every message, so a worker knows which definition to run without a read.
    graph_version: str | None = None
    # The W3C traceparent of the run's start span (celery_durable/tracing.py): every attempt,
    # wait and wake of the run is a child of it, on any worker; None without tracing.
    trace: str | None = None

    @classmethod
    def start(
        cls,
        entry: str,
        queue: str | None = None,
        parent: str | None = None,
        priority: int | None = None,
        graph_version: str | None = None,
        trace: str | None = None,
    ) -> Cursor:
        return cls(
            frontier=[(entry, 1)],
            visits={entry: 1},
            queue=queue,
            parent=parent,
            priority=priority,
            graph_version=graph_version,
            trace=trace,
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cursor:
        return cls(
            frontier=[(n, int(v)) for n, v in data.get("frontier", [])],
            visits=dict(data.get("visits", {})),
            joins={k: list(v) for k, v in data.get("joins", {}).items()},
            queue=data.get("queue"),
            undo=[(n, int(v), int(seq)) for n, v, seq in data.get("undo", [])],
            held=[(n, int(v)) for n, v in data.get("held", [])],
            waits={k: Wait.from_json(w) for k, w in data.get("waits", {}).items()},
            parent=data.get("parent"),
            priority=data.get("priority"),
            graph_version=data.get("graph_version"),
            trace=data.get("trace"),
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "frontier": [list(v) for v in self.frontier],
            "visits": self.visits,
            "joins": self.joins,
        }
        if self.queue is not None:
            data["queue"] = self.queue
        if self.undo:
            data["undo"] = [list(u) for u in self.undo]
        if self.held:
            data["held"] = [list(v) for v in self.held]
        if self.waits:
            data["waits"] = {k: w.to_json() for k, w in self.waits.items()}
        if self.parent is not None:
            data["parent"] = self.parent
        if self.priority is not None:
            data["priority"] = self.priority
        if self.graph_version is not None:
            data["graph_version"] = self.graph_version
        if self.trace is not None:
            data["trace"] = self.trace
        return data

    def copy(self) -> Cursor:
        return Cursor.from_json(self.to_json())

    def holds(self, node: str, visit: int) -> bool:
        return (node, visit) in self.frontier

    @property
    def blocked(self) -> set[Visit]:
        """Due visits that wait: not dispatched until their wait is woken or resumed."""
        visits: set[Visit] = set()
        for wait in self.waits.values():
            visits.update(wait.ready if wait.slot == AFTER else [(wait.node, wait.visit)])
        return visits

    @property
    def in_flight(self) -> list[Visit]:
        blocked = self.blocked
        return [v for v in self.frontier if v not in self.held and v not in blocked]

    def settled(self) -> Status:
        """The status of a run that is neither paused nor compensating: running while a visit
        is in flight, waiting while only waits are open, succeeded when nothing is left."""
        if self.in_flight or self.held:
            return Status.RUNNING
        return Status.WAITING if self.waits or self.frontier else Status.SUCCEEDED

    def wait(self, wait: Wait) -> None:
        self.waits[wait.key] = wait
