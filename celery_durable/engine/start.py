"""Starting a run: validate, store, publish the entry node, in that order, so bad input
changes nothing. Idempotent on the run's id: the same id twice is one run, which is how a
parent node that runs again never starts its child twice."""

from __future__ import annotations

import uuid
from typing import Any

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
from celery_durable.saga.coordinator import interrupt
from celery_durable.saga.shape import GraphShape

# The executions table's id column (persistence/schema.py ID_LENGTH).
MAX_ID_LENGTH = 255


def _check_ids(execution_id: str | None, priority: int | None) -> None:
    if execution_id is not None and not (
        isinstance(execution_id, str) and 0 < len(execution_id) <= MAX_ID_LENGTH
    ):
        raise InvalidExecutionId(execution_id, MAX_ID_LENGTH)
    if priority is not None and (
        isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9
    ):
        raise InvalidPriority(priority)


def start_run(
    runtime: Runtime,
    graph: GraphShape,
    input: dict[str, Any],
    *,
    execution_id: str | None = None,
    countdown: float | None = None,
    queue: str | None = None,
    parent: str | None = None,
    priority: int | None = None,
) -> ExecutionRecord:
    fingerprint = graph.validate()
    _check_ids(execution_id, priority)
    check_fields(graph, input)
    state = dump(graph.name, validate(graph.name, graph.state, input))
    state_json = runtime.state_json(state)
    execution_id = execution_id or uuid.uuid4().hex
    assert graph.entry_node is not None
    cursor = Cursor.start(graph.entry_node, queue, parent, priority)
    go = interrupt(graph, cursor, cursor.frontier)
    base = Base(0, state, cursor, cursor.settled())
    built: list[Publication] = []

    def prepare() -> None:
        """The entry's messages, built while the start is in flight (a countdown's are not:
        they go by Celery's own send)."""
        if countdown is None:
            built[:] = runtime.prepare_all(graph.name, execution_id, base, go)

    record, created = runtime.store.create_execution(
        execution_id=execution_id,
        graph=graph.name,
        fingerprint=fingerprint,
        state=state,
        cursor=cursor.to_json(),
        status=base.status,
        state_json=state_json,
        parent_id=parent,
        meanwhile=prepare,
    )
    if record.graph != graph.name:
        raise ExecutionIdInUse(execution_id, record.graph, graph.name)
    if created:
        try:
            if countdown is None:
                for publication in built:
                    publication.send()
            else:
                for node, visit in go:
                    runtime.dispatcher.dispatch(
                        graph.name, node, visit, execution_id, base, countdown=countdown
                    )
        except Exception as exc:
            # Stored, not sent (the broker is down): the recovery sweep sends it later.
            raise StartNotDispatched(execution_id, exc, runtime.settings.stale_after) from exc
    return record
