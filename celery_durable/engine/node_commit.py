"""A node visit's commit, built from what its function returned: no I/O, no Celery.

From the visit (its base: state, cursor, status), the update the function returned and the
fields other commits wrote since the state was read, to the ``Commit`` that advances the run
and what it hands on, or a ``Failure`` no retry can fix (a merge clash, an update the state
model refuses, a state too large).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from celery_durable.engine.attempt import Attempt
from celery_durable.engine.failure import Failure
from celery_durable.engine.state import apply_update, fit, refuse_unknown, validate
from celery_durable.errors import (
    InvalidInput,
    MergeConflict,
    NotJSONSerializable,
    StateSchemaMismatch,
    StateTooLarge,
    UnknownBreaker,
    UnknownStateFields,
)
from celery_durable.model.cursor import Cursor
from celery_durable.model.records import Commit, ErrorRecord, Kind
from celery_durable.model.wait import Visit
from celery_durable.saga import compensation
from celery_durable.saga.coordinator import Handed, advance
from celery_durable.status import Status

# Errors no retry can fix: the node's output itself is wrong.
PERMANENT = (
    InvalidInput,
    NotJSONSerializable,
    StateTooLarge,
    MergeConflict,
    UnknownBreaker,
    UnknownStateFields,
    StateSchemaMismatch,
)


@dataclass(frozen=True, slots=True)
class Draft:
    """A node commit, ready to send, and the visits it hands on."""

    commit: Commit
    handed: Handed


def draft(
    run: Attempt,
    update: dict[str, Any],
    *,
    clashing: Collection[str],
    lease_token: int,
    may_inline: Callable[[list[Visit]], bool],
) -> Draft | Failure:
    """The commit of ``run``'s visit with ``update``, on ``run.base``. ``clashing``: fields
    written by node commits since the state the function ran on was read (none when the base
    is that state); ``may_inline``: whether the one visit that follows may run in this task."""
    graph, base = run.graph, run.base
    clash = sorted((set(update) - set(graph.reducers)) & set(clashing))
    if clash:
        return Failure(MergeConflict(run.name, clash), permanent=True)
    try:
        refuse_unknown(graph, run.name, update)
        # A stale state is migrated once; without a hook it fit already (before the call).
        current = base.state if graph.upgrader is None else fit(graph, base.state)[1]
        merged = apply_update(current, update, graph.reducers)
        model = validate(graph.name, graph.state, merged, run.name)
        state = model.model_dump(mode="json")
        state_json = run.runtime.state_json(state)
    except PERMANENT as exc:
        return Failure(exc, permanent=True)
    cursor, status, handed, error = _advance(run, model, may_inline)
    commit = run.commit(
        Kind.NODE,
        state=state,
        cursor=cursor,
        status=status,
        output=update,
        meta=handed.meta(),
        error=error,
        lease_token=lease_token,
        state_json=state_json,
    )
    return Draft(commit, handed)


def _advance(
    run: Attempt, model: BaseModel, may_inline: Callable[[list[Visit]], bool]
) -> tuple[Cursor, Status, Handed, ErrorRecord | None]:
    """Where this commit moves the run, and what it hands on."""
    base = run.base
    if base.status == Status.COMPENSATING:
        # The saga is being undone: record this step so that it is undone too, if it has
        # anything to undo.
        undoable = run.graph.nodes[run.name].compensator is not None
        cursor = compensation.completed_while_compensating(
            base.cursor, run.name, run.visit, base.version + 1, undoable=undoable
        )
        return cursor, compensation.status_of(cursor), Handed([]), base.error
    step = advance(run.graph, base.cursor, run.name, run.visit, model)
    status = step.status
    if base.status == Status.PAUSED and status in (Status.RUNNING, Status.WAITING):
        # Paused: what this node made ready waits for resume().
        status = Status.PAUSED
        step.cursor.held.extend(step.ready)
    inline = status == Status.RUNNING and may_inline(step.ready)
    return step.cursor, status, Handed(step.ready, inline), step.error
