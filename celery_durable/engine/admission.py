"""A node visit's door: the one gate every attempt passes before its function runs.

In order: concurrency keys (a node visit takes one of its key's places and gives it up when
the attempt ends; a run of a graph with a limit takes one at its entry node and gives it up
when the run ends), the node's fleet-wide rate limit (a turn), its circuit breaker. A visit
that may not run now waits without holding a worker or counting an attempt: in line for a
place (sent when one frees), or held (a due row the timer loop sends again, or a message with
a countdown for a rate turn that is close). A holder that died frees its place when its lease
runs out (the sweep's timer loop).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from celery_durable.engine.attempt import Attempt, Outcome
from celery_durable.engine.base import Base
from celery_durable.engine.failure import Failure
from celery_durable.engine.flow_control import Held, Turn
from celery_durable.engine.runtime import Runtime
from celery_durable.engine.state import fit
from celery_durable.errors import (
    CircuitOpen,
    ExecutionNotFound,
    StateSchemaMismatch,
    UnknownBreaker,
)
from celery_durable.model.records import utcnow
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
    for graph in runtime.graphs.every():
        name = graph.name
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


@dataclass(frozen=True, slots=True)
class Admitted:
    """Past the gate: the visit's place (given up when the attempt ends), whether the call
    is its breaker's probe, and the rate turn it starts at."""

    place: Holder | None = None
    probe: bool = False
    turn: Turn | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    """Not now: come back at ``held.until``. ``by_message``: a rate turn, which waits as a
    message with a countdown when it is close, keeping calls evenly spaced rather than in
    bursts at each sweep."""

    held: Held
    by_message: bool = False


@dataclass(frozen=True, slots=True)
class Queued:
    """In line for a place under a concurrency key: sent when one frees."""

    holder: Holder


class Gate:
    """Admission for node visits: places, rate turns, breakers, and the holds they decide."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def admit(self, run: Attempt) -> Admitted | Hold | Queued | Failure:
        """Take what this visit needs to run now, or say why it may not."""
        try:
            place = self._places(run)
        except StateSchemaMismatch as exc:
            return Failure(exc, permanent=True)
        if isinstance(place, Queued):
            return place
        decision = self._flow(run)
        if isinstance(decision, Admitted):
            return decision if place is None else replace(decision, place=place)
        self.release(Admitted(place))
        return decision

    def release(self, admitted: Admitted) -> None:
        """The attempt ended: give its visit's place up (the run's is held to its end)."""
        if admitted.place is not None:
            leave(self.runtime, admitted.place)

    def report(self, run: Attempt, admitted: Admitted, failure: Failure | None) -> None:
        """Tell the node's breaker how the call went; a permanent failure is the node's own
        fault, not the service's behind the breaker."""
        breaker = run.graph.nodes[run.name].breaker
        if breaker is None or (failure is not None and failure.permanent):
            return
        self.runtime.flow.report(breaker, failure is None, admitted.probe)

    def wait(self, run: Attempt, decision: Hold | Queued) -> Outcome:
        """The visit waits, without holding a worker or counting an attempt."""
        runtime = self.runtime
        if isinstance(decision, Queued):
            by = f"slot {decision.holder.key}"
        else:
            held = decision.held
            by, delay = held.by, (held.until - utcnow()).total_seconds()
            if decision.by_message and delay <= runtime.settings.eta_threshold:
                run.redispatch(run.attempt, max(delay, 0.0), passed=held.passed)
            else:
                runtime.visits.hold(
                    run.execution_id, run.name, run.visit, run.attempt, held.until, held.passed
                )
        runtime.hooks.node_held(run.graph.name, run.name, by)
        return Outcome.HELD

    def _places(self, run: Attempt) -> Holder | Queued | None:
        """A run's place at its entry node (held to its end), then this visit's place."""
        graph, runtime = run.graph, self.runtime
        node = graph.nodes[run.name]
        entry = run.name == graph.entry_node and run.visit == 1
        run_limit = graph.concurrency if entry else None
        if run_limit is None and node.concurrency is None:
            return None
        model, _ = fit(graph, run.base.state)
        if run_limit is not None:
            key = run_limit.key_of(model)
            holder = Holder(graph_scope(graph.name), key, run.execution_id, run.name, 1)
            if not enter(runtime, replace(holder, attempt=run.attempt), run_limit, None):
                return Queued(holder)
        if node.concurrency is None:
            return None
        key, scope = node.concurrency.key_of(model), node_scope(graph.name, run.name)
        mine = Holder(scope, key, run.execution_id, run.name, run.visit, run.attempt)
        if not enter(runtime, mine, node.concurrency, runtime.settings.lease_ttl):
            return Queued(mine)
        return mine

    def _flow(self, run: Attempt) -> Admitted | Hold | Failure:
        """The node's rate turn, then its breaker."""
        node, flow = run.graph.nodes[run.name], self.runtime.flow
        turn = None
        if node.rate is not None:
            taken = flow.take_turn(node.rate, f"rate {node.rate.name}", run.passed)
            if isinstance(taken, Held):
                return Hold(taken, by_message=True)
            turn = taken
        if node.breaker is None:
            return Admitted(turn=turn)
        try:
            admission = flow.admit(node.breaker)
        except UnknownBreaker as exc:
            # Worker start refuses it; a breaker undeclared since is this node's fault.
            return Failure(exc, permanent=True)
        if admission.retry_at is None:
            return Admitted(probe=admission.probe, turn=turn)
        if node.when_open == "fail":
            return Failure(CircuitOpen(node.breaker, admission.retry_at))
        return Hold(Held(admission.retry_at, f"breaker {node.breaker}"))
