"""What runs next: a run's cursor (model/cursor.py) advanced by each commit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from celery_durable.coroutines import settled
from celery_durable.errors import UnknownNode, VisitCapReached
from celery_durable.model.cursor import Cursor
from celery_durable.model.records import ErrorRecord, error_record
from celery_durable.model.wait import AFTER, BEFORE, Visit, Wait
from celery_durable.saga.shape import GraphShape
from celery_durable.status import Status


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
    ready = interrupt(graph, nxt, ready)
    return Advance(nxt, ready, nxt.settled())


def interrupt(graph: GraphShape, cursor: Cursor, ready: list[Visit]) -> list[Visit]:
    """Of the visits just made ready, those whose node asks for approval first wait for it
    (in ``cursor``); returns the ones to dispatch now."""
    go = []
    for name, visit in ready:
        if graph.nodes[name].interrupt_before:
            cursor.wait(Wait("interrupt", name, visit, BEFORE))
        else:
            go.append((name, visit))
    return go


def successors(graph: GraphShape, node: str, state: BaseModel) -> list[str]:
    targets = list(graph.edges.get(node, ()))
    if node in graph.branches:
        router, paths = graph.branches[node]
        chosen = settled(router(state))
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
