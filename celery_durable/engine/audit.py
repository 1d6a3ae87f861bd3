"""The one way a control operation commits, shared by ``operations`` and ``repairs``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from celery_durable.engine import wakeups
from celery_durable.engine.actors import actor
from celery_durable.engine.base import Base
from celery_durable.engine.rebase import current_row, until_committed
from celery_durable.engine.runtime import Runtime
from celery_durable.errors import CheckpointCorrupted, InvalidTransition, VersionConflict
from celery_durable.model.cursor import Cursor
from celery_durable.model.records import Commit, ErrorRecord, ExecutionRecord, Kind
from celery_durable.saga.shape import GraphShape
from celery_durable.status import Status


@dataclass(frozen=True, slots=True)
class Change:
    """What an operation does to the execution row, besides appending its checkpoint."""

    state: dict[str, Any]
    cursor: Cursor
    status: Status
    error: ErrorRecord | None
    kind: Kind = Kind.MANUAL
    node: str | None = None
    visit: int | None = None
    output: Any = None
    meta: dict[str, Any] | None = None


class Audited:
    """The one way an operation commits: a version-checked checkpoint that says who did
    what and why, refused (changing nothing) when the status does not allow it."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    # -- the one way an operation commits ---------------------------------------------------

    def apply(
        self,
        execution_id: str,
        op: str,
        allowed: Iterable[Status],
        change: Callable[[ExecutionRecord], Change],
        *,
        by: str | None,
        reason: str | None,
        rewrites_row: bool = False,
    ) -> tuple[ExecutionRecord, Commit]:
        """``rewrites_row``: the change takes nothing from the row (a restart), so a row that
        fails its checksum is taken as its newest checkpoint says it was, and healed."""
        allowed = frozenset(allowed)
        store = self.runtime.store

        def read() -> ExecutionRecord:
            try:
                return store.get_execution(execution_id)
            except CheckpointCorrupted as corrupted:
                if not (rewrites_row and corrupted.row):
                    raise
                return store.rebuilt(execution_id)

        def once(conflict: VersionConflict | None) -> tuple[ExecutionRecord, Change, Commit]:
            record = current_row(conflict, read)
            if record.status not in allowed:
                raise InvalidTransition(execution_id, op, record.status, allowed)
            c = change(record)
            commit = Base.of(record).commit(
                execution_id,
                c.kind,
                c.node if c.node is not None else op,
                c.visit if c.visit is not None else record.version + 1,
                state=c.state,
                cursor=c.cursor,
                status=c.status,
                output=c.output,
                meta={"op": op, "by": actor(by), "reason": reason, **(c.meta or {})},
                error=c.error,
            )
            store.save(commit)
            return record, c, commit

        record, c, commit = until_committed(execution_id, once)
        if c.status.finished and c.status != record.status:
            wakeups.finished(self.runtime, execution_id, record.graph, c.status, c.cursor.parent)
        return record, commit

    def _graph(self, record: ExecutionRecord) -> GraphShape:
        return self.runtime.graph_of(record)

    def _dispatch_frontier(self, graph: GraphShape, execution_id: str, commit: Commit) -> None:
        """Dispatch what the commit left in flight (not what waits, or is held by a pause)."""
        base = Base.after(commit)
        self.runtime.dispatch_all(graph.name, execution_id, base, base.cursor.in_flight)

    # -- operations -------------------------------------------------------------------------
