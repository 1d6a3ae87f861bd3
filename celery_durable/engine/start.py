"""Starting a run: validate, store, publish the entry node, in that order, so bad input
changes nothing. Idempotent on the run's id: the same id twice is one run, which is how a
parent node that runs again never starts its child twice."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from celery_durable import tracing
from celery_durable.engine.base import Base
from celery_durable.engine.runtime import Publication, Runtime
from celery_durable.engine.state import check_fields, dump, validate
from celery_durable.errors import (
    ExecutionIdInUse,
    InvalidExecutionId,
    InvalidPriority,
    StartNotDispatched,
)
from celery_durable.model.cursor import Cursor
from celery_durable.model.records import ExecutionRecord
from celery_durable.model.tags import checked
from celery_durable.model.wait import Visit
from celery_durable.saga.coordinator import interrupt
from celery_durable.saga.shape import GraphShape

# The executions table's id column (persistence/schema.py ID_LENGTH).
MAX_ID_LENGTH = 255


class StartKeywords(TypedDict, total=False):
    """``StartOptions`` as the keyword arguments of ``Durable.start`` (``parent`` is the
    engine's own)."""

    execution_id: str | None
    countdown: float | None
    queue: str | None
    priority: int | None
    tags: Mapping[str, str] | None


@dataclass(frozen=True, slots=True)
class StartOptions:
    """How a run starts, besides its input; checked when made, so a bad one changes nothing.

    ``execution_id``: the run's id (the same id twice is the same run); ``countdown``: seconds
    before its entry node runs; ``queue``: the queue of every node without one of its own;
    ``priority``: the message priority (0-9) of every node; ``parent``: the run that started
    this one (told when it ends); ``tags``: string pairs to find the run by (model/tags.py),
    None for none, or for a child its parent's.
    """

    execution_id: str | None = None
    countdown: float | None = None
    queue: str | None = None
    priority: int | None = None
    parent: str | None = None
    tags: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if self.tags is not None:
            object.__setattr__(self, "tags", checked(self.tags))
        execution_id, priority = self.execution_id, self.priority
        if execution_id is not None and not (
            isinstance(execution_id, str) and 0 < len(execution_id) <= MAX_ID_LENGTH
        ):
            raise InvalidExecutionId(execution_id, MAX_ID_LENGTH)
        if priority is not None and (
            isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9
        ):
            raise InvalidPriority(priority)


@dataclass(frozen=True, slots=True)
class _Entry:
    """A run about to be stored: its id, first base, and the entry visits to send."""

    execution_id: str
    base: Base
    go: list[Visit]
    state_json: str


def start_run(
    runtime: Runtime, graph: GraphShape, input: dict[str, Any], options: StartOptions
) -> ExecutionRecord:
    """Validate, store (idempotent on the id), publish the entry node: in that order, so bad
    input changes nothing. The entry's messages are built while the insert is in flight."""
    with tracing.run_start(graph.name) as span:
        record = _start(runtime, graph, input, options, span)
        span.set(execution_id=record.id, version=graph.version)
        return record


def _start(
    runtime: Runtime,
    graph: GraphShape,
    input: dict[str, Any],
    options: StartOptions,
    span: tracing.Traced,
) -> ExecutionRecord:
    fingerprint = graph.validate()
    entry = _entry(runtime, graph, input, options, span.traceparent())
    pending = runtime.store.send_start(
        execution_id=entry.execution_id,
        graph=graph.name,
        fingerprint=fingerprint,
        state=entry.base.state,
        cursor=entry.base.cursor,
        status=entry.base.status,
        state_json=entry.state_json,
        parent_id=options.parent,
        tags=options.tags,
    )
    # A countdown's messages are not built ahead: they go by Celery's own send.
    built = []
    if options.countdown is None:
        built = runtime.prepare_all(graph.name, entry.execution_id, entry.base, entry.go)
    record, created = pending.result()
    if record.graph != graph.name:
        raise ExecutionIdInUse(entry.execution_id, record.graph, graph.name)
    if created:
        _publish(runtime, graph.name, entry, built, options.countdown)
        runtime.hooks.execution_started(record.id, graph.name, graph.version)
    return record


def _entry(
    runtime: Runtime,
    graph: GraphShape,
    input: dict[str, Any],
    options: StartOptions,
    trace: str | None,
) -> _Entry:
    check_fields(graph, input)
    state = dump(graph.name, validate(graph.name, graph.state, input))
    state_json = runtime.state_json(state)
    assert graph.entry_node is not None
    cursor = Cursor.start(
        graph.entry_node, options.queue, options.parent, options.priority, graph.version, trace
    )
    go = interrupt(graph, cursor, cursor.frontier)
    base = Base(0, state, cursor, cursor.settled())
    return _Entry(options.execution_id or uuid.uuid4().hex, base, go, state_json)


def _publish(
    runtime: Runtime, graph: str, entry: _Entry, built: list[Publication], countdown: float | None
) -> None:
    try:
        if countdown is None:
            for publication in built:
                publication.send()
        else:
            for node, visit in entry.go:
                runtime.dispatcher.dispatch(
                    graph, node, visit, entry.execution_id, entry.base, countdown=countdown
                )
    except Exception as exc:
        # Stored, not sent (the broker is down): the recovery sweep sends it later.
        raise StartNotDispatched(entry.execution_id, exc, runtime.settings.stale_after) from exc
