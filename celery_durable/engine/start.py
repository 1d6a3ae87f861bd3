"""Starting a run: validate, store, publish the entry node, in that order, so bad input
changes nothing. Idempotent on the run's id: the same id twice is one run, which is how a
parent node that runs again never starts its child twice."""

from __future__ import annotations

import uuid
from typing import Any

from celery_durable.engine.base import Base
from celery_durable.engine.runtime import Runtime
from celery_durable.engine.state import check_fields, dump, validate
from celery_durable.errors import (
    ExecutionIdInUse,
    InvalidExecutionId,
    InvalidPriority,
    StartNotDispatched,
)
from celery_durable.persistence.records import ExecutionRecord
from celery_durable.saga.coordinator import Cursor
from celery_durable.saga.shape import GraphShape

# The executions table's id column (persistence/schema.py ID_LENGTH).
MAX_ID_LENGTH = 255


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
    if execution_id is not None and not (
        isinstance(execution_id, str) and 0 < len(execution_id) <= MAX_ID_LENGTH
    ):
        raise InvalidExecutionId(execution_id, MAX_ID_LENGTH)
    check_fields(graph, input)
    state = dump(graph.name, validate(graph.name, graph.state, input))
    state_json = runtime.state_json(state)
    execution_id = execution_id or uuid.uuid4().hex
    assert graph.entry_node is not None
    if priority is not None and (
        isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9
    ):
        raise InvalidPriority(priority)
    cursor = Cursor.start(graph.entry_node, queue, parent, priority)
    go = cursor.interrupt(graph, cursor.frontier)
    record, created = runtime.store.create_execution(
        execution_id=execution_id,
        graph=graph.name,
        fingerprint=fingerprint,
        state=state,
        cursor=cursor.to_json(),
        status=cursor.settled(),
        state_json=state_json,
        parent_id=parent,
    )
    if record.graph != graph.name:
        raise ExecutionIdInUse(execution_id, record.graph, graph.name)
    if created:
        base = Base(0, state, cursor, record.status)
        try:
            for node, visit in go:
                runtime.dispatcher.dispatch(
                    graph.name, node, visit, execution_id, base, countdown=countdown
                )
        except Exception as exc:
            # Stored, not sent (the broker is down): the recovery sweep sends it later.
            raise StartNotDispatched(execution_id, exc, runtime.settings.stale_after) from exc
    return record
