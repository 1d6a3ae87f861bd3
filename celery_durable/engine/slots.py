"""Concurrency keys at work: a node visit takes one of its key's places before it runs and
gives it up when the attempt ends; a run of a graph with a limit takes one at its entry node
and gives it up when it ends. A freed place goes to the first in line, whose visit is sent.
A holder that died frees its place when its lease runs out (the sweep's timer loop)."""

from __future__ import annotations

from datetime import datetime

from celery_durable.engine.base import Base
from celery_durable.engine.runtime import Runtime
from celery_durable.errors import ExecutionNotFound
from celery_durable.persistence.slot_table import Holder
from celery_durable.policies.limits import Limit
from celery_durable.status import LIVE

Limits = dict[str, tuple[int, float | None]]


def node_scope(graph: str, node: str) -> str:
    return f"node {graph}.{node}"


def graph_scope(graph: str) -> str:
    return f"graph {graph}"


def limits(runtime: Runtime) -> Limits:
    """Every scope the graphs declare: its max, and its ttl (None: held until the run ends)."""
    found: Limits = {}
    for name, graph in runtime.graphs.items():
        if graph.concurrency is not None:
            found[graph_scope(name)] = (graph.concurrency.max, None)
        for node, shape in graph.nodes.items():
            if shape.concurrency is not None:
                found[node_scope(name, node)] = (shape.concurrency.max, runtime.settings.lease_ttl)
    return found


def enter(runtime: Runtime, holder: Holder, limit: Limit, ttl: float | None) -> bool:
    """A place for ``holder``, or False: it waits in line, and is sent when its turn comes."""
    return runtime.flow.slots.take(holder, limit.max, ttl)


def leave(runtime: Runtime, holder: Holder) -> None:
    """Give ``holder``'s place up and send whoever it goes to."""
    known = limits(runtime)
    if holder.scope in known:
        send(runtime, runtime.flow.slots.leave(holder, *known[holder.scope]), known)


def reap(runtime: Runtime, now: datetime) -> int:
    """Free the places of holders that died or ended; returns how many visits were sent."""
    known = limits(runtime)
    if not known:
        return 0
    return send(runtime, runtime.flow.slots.reap(now, known), known)


def send(runtime: Runtime, granted: list[Holder], known: Limits) -> int:
    """Send the visits that were handed places; a place whose visit is no longer due (the
    run was cancelled, moved on, or is gone) is given up again at once."""
    sent = 0
    while granted:
        holder = granted.pop(0)
        try:
            record = runtime.store.get_execution(holder.execution_id)
        except ExecutionNotFound:
            record = None
        base = None if record is None else Base.of(record)
        if (
            record is None
            or base is None
            or record.status not in LIVE
            or not (base.cursor.holds(holder.node, holder.visit))
        ):
            granted += runtime.flow.slots.leave(holder, *known[holder.scope])
            continue
        runtime.dispatcher.dispatch(
            record.graph, holder.node, holder.visit, record.id, base, attempt=holder.attempt
        )
        sent += 1
    return sent
