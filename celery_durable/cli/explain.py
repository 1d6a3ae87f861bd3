"""What ``show`` says about a run beyond its row: what it waits for, the last failed attempt
of each node it is at, and what an operator can do now, as commands."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from celery_durable import Graph, Status, render
from celery_durable.engine.bulk import OPERATIONS
from celery_durable.model.records import AttemptRecord, Checkpoint, ExecutionRecord, Kind

# What an operator may do besides the bulk operations, and when.
SKIPPABLE = frozenset({Status.FAILED, Status.NEEDS_INTERVENTION})
# Operator commands that start a node's attempts afresh: failures before them are the past.
FRESH_START = frozenset({"retry", "restart"})


def waits(record: ExecutionRecord) -> list[str]:
    """``waiting: sleep until ... at nap``, one line per open wait, with the command that
    ends it early where there is one."""
    if record.status.finished:
        return []
    lines = []
    for wait in record.cursor.waits.values():
        line = f"waiting: {render.waiting(wait.to_json())}"
        if wait.kind == "interrupt":
            line += f" (approve: durable resume {record.id} [--update JSON])"
        elif wait.kind == "event":
            line += f" (send it: durable send-event {record.id} {wait.event} [--data JSON])"
        lines.append(line)
    return lines


def last_failures(
    record: ExecutionRecord, checkpoints: Iterable[Checkpoint], attempts: Iterable[AttemptRecord]
) -> list[AttemptRecord]:
    """The last failed attempt of each visit the run is at (a node due, the compensation to
    undo next), since the last operator command that started attempts afresh."""
    cursor = record.cursor
    current = {(Kind.NODE, name, visit) for name, visit in cursor.frontier}
    current |= {(Kind.COMPENSATION, name, visit) for name, visit, _ in cursor.undo[:1]}
    fresh = [
        cp.created_at
        for cp in checkpoints
        if cp.kind == Kind.MANUAL and (cp.meta or {}).get("op") in FRESH_START
    ]
    since = max(fresh, default=None)
    last: dict[tuple[str, str, int], AttemptRecord] = {}
    for failed in attempts:
        key = (failed.kind, failed.node, failed.visit)
        if key in current and (since is None or failed.failed_at > since):
            last[key] = failed
    return list(last.values())


def failure_lines(
    record: ExecutionRecord,
    failures: Iterable[AttemptRecord],
    limits: Mapping[tuple[str, str], int],
) -> list[str]:
    """``last error: call: attempt 3 of 5 failed: ConnectionError: ... (at ...)``."""
    going_on = record.status in (Status.RUNNING, Status.COMPENSATING)
    lines = []
    for failed in failures:
        limit = limits.get((failed.kind, failed.node))
        line = f"last error: {failed.node}: {render.attempt(failed, limit)}"
        line += f" (at {render.when(failed.failed_at)})"
        if going_on:
            line += "; it will be tried again"
        lines.append(line)
    return lines


def operations(record: ExecutionRecord, graph: Graph | None) -> list[str]:
    """The operations the run's status allows now (compensate only where there is
    something to undo, as far as this process knows the graph)."""
    status = record.status
    allowed = [op for op, (statuses, _) in OPERATIONS.items() if status in statuses]
    if graph is not None and not any(n.compensator for n in graph.nodes.values()):
        allowed = [op for op in allowed if op != "compensate"]
    if status in SKIPPABLE:
        allowed.append("skip")
    if not status.finished:
        allowed.append("patch")
    return allowed


def next_steps(record: ExecutionRecord, graph: Graph | None) -> list[str]:
    """What to do next, as commands: for a failed run, retry (and skip); for any run, the
    operations its status allows."""
    lines = []
    failed_at = record.error.get("node") if record.error else None
    node = failed_at or next(iter(record.cursor.frontier), ("", 0))[0]
    if record.status in SKIPPABLE and node:
        lines.append(
            f"next: fix the cause, then durable retry {record.id} runs {node} again; or "
            f"durable skip {record.id} {node} --output JSON marks it done by hand"
        )
    allowed = operations(record, graph)
    if allowed:
        lines.append(f"operations: {', '.join(allowed)} (durable <operation> {record.id})")
    return lines


def attempt_json(failed: AttemptRecord, limits: Mapping[tuple[str, str], int]) -> dict[str, Any]:
    """A failed attempt as a ``history --json`` row, beside the checkpoints."""
    return {
        "kind": "attempt",
        "of": str(failed.kind),
        "execution_id": failed.execution_id,
        "node": failed.node,
        "visit": failed.visit,
        "attempt": failed.attempt,
        "max_attempts": limits.get((failed.kind, failed.node)),
        "error": failed.error,
        "created_at": failed.failed_at,
    }
