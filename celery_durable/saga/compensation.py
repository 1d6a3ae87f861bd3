"""Which compensation is due: a saga's committed steps are undone newest first, one at a time,
and only once no step is in flight any more (a step that commits while the saga compensates
joins the front of the list)."""

from __future__ import annotations

from collections.abc import Iterable

from celery_durable.model.cursor import Cursor, Undo
from celery_durable.model.records import Checkpoint, Kind
from celery_durable.saga.shape import GraphShape
from celery_durable.status import Status


def plan(graph: GraphShape, history: Iterable[Checkpoint]) -> list[Undo]:
    """Committed steps that have a compensation and were not undone yet, newest first."""
    steps = [cp for cp in history if cp.kind in (Kind.NODE, Kind.COMPENSATION)]
    undone = {(cp.node, cp.visit) for cp in steps if cp.kind == Kind.COMPENSATION}
    return [
        (cp.node, cp.visit, cp.seq)
        for cp in reversed(steps)
        if cp.kind == Kind.NODE
        and (cp.node, cp.visit) not in undone
        and cp.node in graph.nodes
        and graph.nodes[cp.node].compensator is not None
    ]


def due(status: Status, cursor: Cursor) -> Undo | None:
    """The one compensation to run now, if any: every caller asks this rule."""
    if status != Status.COMPENSATING or cursor.frontier or not cursor.undo:
        return None
    return cursor.undo[0]


def completed_while_compensating(
    cursor: Cursor, node: str, visit: int, seq: int, *, undoable: bool
) -> Cursor:
    """A step that was in flight when compensation began committed: undo it first, if it
    has a compensation (``undoable``); else it only leaves the frontier."""
    nxt = cursor.copy()
    nxt.frontier.remove((node, visit))
    if undoable:
        nxt.undo.insert(0, (node, visit, seq))
    return nxt


def status_of(cursor: Cursor) -> Status:
    """Compensating while anything is in flight or left to undo; compensated after that."""
    return Status.COMPENSATING if cursor.frontier or cursor.undo else Status.COMPENSATED
