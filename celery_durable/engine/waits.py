"""Waking waiting runs: a timer came due, an event arrived, an operator resumed an interrupt.

Every wake is one version-checked WAKE checkpoint, unique per wait, so however many sweepers
or senders race, a wait is woken once and its visit dispatched once. The checkpoint records
what woke it (which event, a timeout, an approval): that is what the node reads when it runs
again, and an event is consumed exactly when such a checkpoint names it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery_durable import faults
from celery_durable.engine.base import MAX_COMMIT_TRIES, Base
from celery_durable.engine.runtime import Runtime
from celery_durable.errors import (
    DuplicateCheckpoint,
    InvalidInput,
    InvalidTransition,
    PayloadTooLarge,
    VersionConflict,
)
from celery_durable.persistence import codec
from celery_durable.persistence.records import EventRecord, ExecutionRecord, Kind
from celery_durable.saga.waits import AFTER, Wait
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
    for _ in range(MAX_COMMIT_TRIES):
        record = runtime.store.get_execution(execution_id)
        base = Base.of(record)
        wait = base.cursor.waits.get(key)
        if wait is None or record.status not in WAKEABLE:
            return False
        output = result(record, wait)
        if output is None:
            return False
        cursor = base.cursor.copy()
        del cursor.waits[key]
        woken = [(wait.node, wait.visit)]
        if wait.slot == AFTER:
            woken = cursor.interrupt(runtime.graph(record.graph), list(wait.ready))
        if record.status == Status.PAUSED:
            cursor.held.extend(woken)
        commit = base.commit(
            execution_id,
            Kind.WAKE,
            wait.checkpoint_node,
            wait.visit,
            state=patch(record.state) if patch else None,
            cursor=cursor,
            status=Status.PAUSED if record.status == Status.PAUSED else cursor.settled(),
            output=output,
            meta=meta,
        )
        try:
            runtime.store.save(commit)
        except VersionConflict:
            continue
        except DuplicateCheckpoint:
            return False
        faults.hit(faults.AFTER_WAKE, wait.node)
        if record.status != Status.PAUSED:
            runtime.dispatch_all(record.graph, execution_id, Base.after(commit), woken)
        if commit.status.finished:
            runtime.hooks.execution_finished(execution_id, record.graph, commit.status)
        return True
    raise VersionConflict(execution_id, -1)


def timer_result(record: ExecutionRecord, wait: Wait) -> dict[str, Any]:
    """A sleep ended, or an event wait timed out."""
    return {"due": wait.until, "timeout": wait.kind == "event"}


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
        return None if event is None else {"event": event.id, "payload": event.payload}

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
) -> EventRecord:
    """Store an event for the run (kept until a wait consumes it) and wake a wait for it.
    Refused, storing nothing, for an unknown or finished run or a payload that is not JSON or
    too large; the same ``idempotency_key`` twice stores one event."""
    if not isinstance(name, str) or not name or len(name) > 200:
        raise InvalidInput("<event>", f"an event name is a string of 1 to 200 characters: {name!r}")
    record = runtime.store.get_execution(execution_id)
    if record.status not in SENDABLE:
        raise InvalidTransition(execution_id, "send_event", record.status, SENDABLE)
    text = codec.dumps(payload, "The event payload")
    size = len(text.encode())
    if size > runtime.settings.max_state_bytes:
        raise PayloadTooLarge("The event payload", size, runtime.settings.max_state_bytes)
    event, _ = runtime.events.add(execution_id, name, text, idempotency_key)
    wake_event_waits(runtime, execution_id)
    return event


def due_at(wait: Wait) -> datetime | None:
    return None if wait.until is None else datetime.fromtimestamp(wait.until, UTC)
