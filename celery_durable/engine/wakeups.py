"""Waking waiting runs: a timer came due, an event arrived, an operator resumed an interrupt.

Every wake is one version-checked WAKE checkpoint, unique per wait, so however many sweepers
or senders race, a wait is woken once and its visit dispatched once. The checkpoint records
what woke it (which event, a timeout, an approval): that is what the node reads when it runs
again, and an event is consumed exactly when such a checkpoint names it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery_durable import faults, tracing
from celery_durable.engine.actors import actor
from celery_durable.engine.base import Base
from celery_durable.engine.rebase import current_row, until_committed
from celery_durable.engine.runtime import Runtime
from celery_durable.errors import (
    DuplicateCheckpoint,
    ExecutionNotFound,
    InvalidInput,
    InvalidTransition,
    PayloadTooLarge,
    VersionConflict,
)
from celery_durable.model.records import Commit, EventRecord, ExecutionRecord, Kind
from celery_durable.model.wait import AFTER, Visit, Wait
from celery_durable.persistence import codec
from celery_durable.saga.coordinator import interrupt
from celery_durable.status import FINISHED, Status

# A wait is woken while its run goes on; while paused, the woken visit waits for resume().
WAKEABLE = frozenset({Status.RUNNING, Status.WAITING, Status.PAUSED})
# Events are kept for any run that may still wait for one.
SENDABLE = frozenset(set(Status) - FINISHED)

# What woke a wait, from the run as committed; None: nothing has, yet.
Result = Callable[[ExecutionRecord, Wait], dict[str, Any] | None]
Patch = Callable[[dict[str, Any]], dict[str, Any]]


def wake(
    runtime: Runtime,
    execution_id: str,
    key: str,
    result: Result,
    *,
    patch: Patch | None = None,
    meta: dict[str, Any] | None = None,
) -> bool:
    """Close wait ``key`` with what ``result`` says woke it, then hand on what waited: the
    visit, or after an interrupt_after the visits its node made ready. ``patch`` changes the
    state in the same commit (an approval's update). Returns whether this call woke it."""

    def once(conflict: VersionConflict | None) -> _Woken | None:
        record = current_row(conflict, lambda: runtime.store.get_execution(execution_id))
        woken = _woken(runtime, record, key, result, patch, meta)
        if woken is None:
            return None
        try:
            runtime.store.save(woken.commit)
        except DuplicateCheckpoint:
            return None
        return woken

    done = until_committed(execution_id, once)
    if done is None:
        return False
    commit, graph = done.commit, done.record.graph
    tracing.event(
        done.record.cursor.trace,
        f"durable.wake {key}",
        {"execution_id": execution_id, "graph": graph, "node": done.node, "wait": key},
    )
    faults.hit(faults.AFTER_WAKE, done.node)
    if commit.status != Status.PAUSED:
        runtime.dispatch_all(graph, execution_id, Base.after(commit), done.visits)
    if commit.status.finished:
        finished(runtime, execution_id, graph, commit.status, done.parent)
    return True


@dataclass(frozen=True, slots=True)
class _Woken:
    """A wake's commit, and what it hands on: the visits that waited."""

    record: ExecutionRecord
    commit: Commit
    node: str
    visits: list[Visit]
    parent: str | None


def _woken(
    runtime: Runtime,
    record: ExecutionRecord,
    key: str,
    result: Result,
    patch: Patch | None,
    meta: dict[str, Any] | None,
) -> _Woken | None:
    """The commit that closes wait ``key`` of ``record``; None if it is not open, or not over."""
    base = Base.of(record)
    wait = base.cursor.waits.get(key)
    if wait is None or record.status not in WAKEABLE:
        return None
    output = result(record, wait)
    if output is None:
        return None
    cursor = base.cursor.copy()
    del cursor.waits[key]
    woken = [(wait.node, wait.visit)]
    if wait.slot == AFTER:
        woken = interrupt(runtime.graph_of(record), cursor, list(wait.ready))
    paused = record.status == Status.PAUSED
    if paused:
        cursor.held.extend(woken)
    commit = base.commit(
        record.id,
        Kind.WAKE,
        wait.checkpoint_node,
        wait.visit,
        state=patch(record.state) if patch else None,
        cursor=cursor,
        status=Status.PAUSED if paused else cursor.settled(),
        output=output,
        meta=meta,
    )
    return _Woken(record, commit, wait.node, woken, cursor.parent)


def timer_result(runtime: Runtime) -> Result:
    """A sleep ended, or an event wait timed out; a wait for children is only looked at again
    (its timer heals a wake-up lost when a child's worker died after the child ended)."""

    def result(record: ExecutionRecord, wait: Wait) -> dict[str, Any] | None:
        if wait.kind in ("child", "children"):
            return child_result(runtime, record.id, wait)
        return {"due": wait.until, "timeout": wait.kind == "event"}

    return result


def child_result(runtime: Runtime, parent: str, wait: Wait) -> dict[str, Any] | None:
    """What ended a wait for a child (its final status, state, error) or for all of a map's
    children (how many); None while one is still going."""
    assert wait.child is not None
    if wait.kind == "children":
        done = runtime.store.count_children(parent, wait.child, FINISHED)
        return {"children": done} if done >= (wait.count or 0) else None
    child = runtime.store.get_execution(wait.child)
    if not child.status.finished:
        return None
    return {"status": str(child.status), "state": child.state, "error": child.error}


def children_result(runtime: Runtime) -> Result:
    """A wake for a child wait, from the waiting run as committed (see child_result)."""
    return lambda record, wait: child_result(runtime, record.id, wait)


def finished(
    runtime: Runtime, execution_id: str, graph: str, status: Status, parent: str | None
) -> None:
    """A run ended: tell the hooks, and the parent that may be waiting for it."""
    runtime.hooks.execution_finished(execution_id, graph, status)
    if parent is None:
        return
    try:
        record = runtime.store.get_execution(parent)
    except ExecutionNotFound:
        return
    for key, wait in list(Base.of(record).cursor.waits.items()):
        if wait.child is not None and (
            wait.child == execution_id
            or (wait.kind == "children" and execution_id.startswith(wait.child))
        ):
            wake(runtime, parent, key, children_result(runtime))


def next_event(runtime: Runtime, execution_id: str, name: str) -> EventRecord | None:
    """The oldest event of ``name`` that no wait of this run has consumed."""
    consumed = {
        cp.output["event"]
        for cp in runtime.store.list(execution_id, kinds=[Kind.WAKE])
        if isinstance(cp.output, dict) and "event" in cp.output
    }
    return runtime.events.first(execution_id, name, consumed)


def event_result(runtime: Runtime) -> Result:
    def result(record: ExecutionRecord, wait: Wait) -> dict[str, Any] | None:
        assert wait.event is not None
        event = next_event(runtime, record.id, wait.event)
        if event is None:
            return None
        woke = {"event": event.id, "payload": event.payload}
        return {**woke, "by": event.sent_by} if event.sent_by is not None else woke

    return result


def wake_event_waits(runtime: Runtime, execution_id: str) -> None:
    """Give every event wait of the run the oldest event it can have."""
    record = runtime.store.get_execution(execution_id)
    for key, wait in list(Base.of(record).cursor.waits.items()):
        if wait.kind == "event":
            wake(runtime, execution_id, key, event_result(runtime))


def send_event(
    runtime: Runtime,
    execution_id: str,
    name: str,
    payload: Any = None,
    idempotency_key: str | None = None,
    *,
    by: str | None = None,
    reason: str | None = None,
) -> EventRecord:
    """Store an event for the run (kept until a wait consumes it) and wake a wait for it.
    Refused, storing nothing, for an unknown or finished run or a payload that is not JSON or
    too large; the same ``idempotency_key`` twice stores one event. Who sent it (``by``,
    default the user and host) and why are kept with it, and with the wake it causes."""
    if not isinstance(name, str) or not name or len(name) > 200:
        raise InvalidInput("<event>", f"an event name is a string of 1 to 200 characters: {name!r}")
    record = runtime.store.get_execution(execution_id)
    if record.status not in SENDABLE:
        raise InvalidTransition(execution_id, "send_event", record.status, SENDABLE)
    text = codec.dumps(payload, "The event payload")
    size = len(text.encode())
    if size > runtime.settings.max_state_bytes:
        raise PayloadTooLarge("The event payload", size, runtime.settings.max_state_bytes)
    who = actor(by)[:200]
    event, _ = runtime.events.add(
        execution_id, name, text, idempotency_key, sent_by=who, reason=reason
    )
    wake_event_waits(runtime, execution_id)
    return event


def due_at(runtime: Runtime, wait: Wait) -> datetime | None:
    """When the wait's timer fires: at its end for a sleep or event timeout, every
    ``stale_after`` for a wait on children, never for an event without a timeout."""
    if wait.until is not None:
        return datetime.fromtimestamp(wait.until, UTC)
    if wait.kind in ("child", "children"):
        return datetime.now(UTC) + timedelta(seconds=runtime.settings.stale_after)
    return None
