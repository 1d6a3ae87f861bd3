"""What runs next: the cursor of a run through its graph, advanced by each commit.

The cursor is stored on the execution row and travels in every node message, so deciding
what follows a node needs no database read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from celery_durable.errors import UnknownNode, VisitCapReached
from celery_durable.persistence.records import ErrorRecord, error_record
from celery_durable.saga.shape import GraphShape
from celery_durable.saga.waits import AFTER, BEFORE, Visit, Wait
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

    @classmethod
    def start(
        cls,
        entry: str,
        queue: str | None = None,
        parent: str | None = None,
        priority: int | None = None,
    ) -> Cursor:
        return cls(
            frontier=[(entry, 1)],
            visits={entry: 1},
            queue=queue,
            parent=parent,
            priority=priority,
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

    def interrupt(self, graph: GraphShape, ready: list[Visit]) -> list[Visit]:
        """Of the visits just made ready, those whose node asks for approval first wait for
        it; returns the ones to dispatch now."""
        go = []
        for name, visit in ready:
            if graph.nodes[name].interrupt_before:
                self.wait(Wait("interrupt", name, visit, BEFORE))
            else:
                go.append((name, visit))
        return go


@dataclass(frozen=True, slots=True)
class Advance:
    """The outcome of committing one node visit."""

    cursor: Cursor
    ready: list[Visit]
    status: Status
    error: ErrorRecord | None = None


def advance(graph: GraphShape, cursor: Cursor, node: str, visit: int, state: BaseModel) -> Advance:
    """The cursor after ``node`` visit ``visit`` committed with ``state``."""
    nxt = cursor.copy()
    nxt.frontier.remove((node, visit))
    try:
        targets = successors(graph, node, state)
    except UnknownNode as exc:
        return Advance(nxt, [], Status.FAILED, error_record("UnknownNode", str(exc), node))
    ready: list[Visit] = []
    for target in targets:
        inputs = graph.joins.get(target)
        if inputs is not None:
            arrived = set(nxt.joins.get(target, ())) | {node}
            if not arrived >= inputs:
                nxt.joins[target] = sorted(arrived)
                continue
            nxt.joins.pop(target, None)
        count = nxt.visits.get(target, 0) + 1
        cap = graph.nodes[target].max_visits if target in graph.nodes else count
        if count > cap:
            error = error_record("VisitCapReached", str(VisitCapReached(graph.name, target, cap)))
            return Advance(nxt, [], Status.FAILED, {**error, "node": target})
        nxt.visits[target] = count
        ready.append((target, count))
    nxt.frontier.extend(ready)
    if node in graph.nodes and graph.nodes[node].interrupt_after:
        # Approval after this node: what it made ready waits for resume() (and then, for a
        # node that wants approval before it too, for that).
        nxt.wait(Wait("interrupt", node, visit, AFTER, ready=tuple(ready)))
        ready = []
    ready = nxt.interrupt(graph, ready)
    return Advance(nxt, ready, nxt.settled())


def successors(graph: GraphShape, node: str, state: BaseModel) -> list[str]:
    targets = list(graph.edges.get(node, ()))
    if node in graph.branches:
        router, paths = graph.branches[node]
        chosen = router(state)
        names = [] if chosen is None else [chosen] if isinstance(chosen, str) else list(chosen)
        allowed = set(paths) if paths is not None else set(graph.nodes)
        for name in names:
            if name not in allowed:
                raise UnknownNode(graph.name, str(name), sorted(allowed))
            if name not in targets:
                targets.append(name)
    return targets


@dataclass(frozen=True, slots=True)
class Handed:
    """What a node commit handed on, kept in its checkpoint's meta: the visits it made ready
    and whether this task ran the one that followed inline. A redelivered message replays the
    commit from it, walking inline visits to whatever is still due."""

    ready: list[Visit]
    inline: bool = False

    @classmethod
    def of(cls, meta: dict[str, Any] | None) -> Handed:
        meta = meta or {}
        return cls(
            [(name, int(visit)) for name, visit in meta.get("next", [])], bool(meta.get("inline"))
        )

    def meta(self) -> dict[str, Any]:
        return {"next": self.ready, "inline": True} if self.inline else {"next": self.ready}
