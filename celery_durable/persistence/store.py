"""The checkpoint store: executions and their append-only checkpoints.

save() is the moment a node happened: one transaction inserts the checkpoint and advances the
execution, refused if the execution moved on (VersionConflict) or the visit is already
committed (DuplicateCheckpoint). send() is the same write handed back in flight
(pending.py). Reads of one run are history.py's; everything read back is checked against
its checksum.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from datetime import datetime
from typing import Any, NotRequired, TypedDict, Unpack

from sqlalchemy import ColumnElement, Select, func, or_, select, tuple_, update

from celery_durable.model.cursor import Cursor
from celery_durable.model.records import (
    Checkpoint,
    Commit,
    ErrorRecord,
    ExecutionRecord,
    utcnow,
)
from celery_durable.persistence import (  # schedule_rows declares its table on the metadata
    codec,
    gauges,
    run_rows,
    schedule_rows,  # noqa: F401
    tag_rows,
)
from celery_durable.persistence.dialect import Waiter
from celery_durable.persistence.gauges import ACTIVE_NAMES, ExecutionGauges
from celery_durable.persistence.history import RunHistory
from celery_durable.persistence.pending import PendingCommit, PendingStart
from celery_durable.persistence.rows import (
    advance_row,
    execution_record,
    start_row,
)
from celery_durable.persistence.schema import (
    executions,
)
from celery_durable.status import ENDS_WAIT, Status


class NewExecution(TypedDict):
    """What ``send_start`` takes: a run's first row and checkpoint."""

    execution_id: str
    graph: str
    fingerprint: str
    state: dict[str, Any]
    cursor: Cursor
    status: NotRequired[Status]
    meta: NotRequired[dict[str, Any] | None]
    state_json: NotRequired[str | None]
    parent_id: NotRequired[str | None]
    tags: NotRequired[Mapping[str, str] | None]


class ListFilters(TypedDict, total=False):
    """What ``list_executions`` selects by."""

    status: Status | str | Iterable[Status | str] | None
    graph: str | None
    since: datetime | None
    parent: str | None
    id_prefix: str | None
    before: tuple[datetime, str] | None
    limit: int
    tags: Mapping[str, str] | None


class CheckpointStore(RunHistory):
    """save / send and the execution rows here; load / latest / list / find in RunHistory."""

    # -- executions -------------------------------------------------------------------------

    def create_execution(self, **new: Unpack[NewExecution]) -> tuple[ExecutionRecord, bool]:
        """Insert an execution at version 0 with its start checkpoint; idempotent on the id.
        Returns the execution as stored and whether this call created it."""
        return self.send_start(**new).result()

    def send_start(
        self,
        *,
        execution_id: str,
        graph: str,
        fingerprint: str,
        state: dict[str, Any],
        cursor: Cursor,
        status: Status = Status.RUNNING,
        meta: dict[str, Any] | None = None,
        state_json: str | None = None,
        parent_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> PendingStart:
        """``create_execution``, sent: returns before the database answers (PostgreSQL), so
        the caller works meanwhile. Collect ``result()`` before this thread uses the store
        again (pending.py). ``tags``: the run's own, checked (model/tags.py); None: its
        parent's, copied."""
        now = utcnow()
        start = start_row(
            self.sealer,
            execution_id=execution_id,
            graph=graph,
            fingerprint=fingerprint,
            status=status,
            parent_id=parent_id,
            state_text=state_json or codec.dumps(state, "The initial state"),
            cursor=cursor,
            meta=meta,
            now=now,
            tags=tags,
        )
        sent = self.db.dialect.send_start(self.db.engines, start)
        record = ExecutionRecord(
            id=execution_id,
            graph=graph,
            fingerprint=fingerprint,
            status=status,
            version=0,
            state=state,
            cursor=cursor,
            error=None,
            created_at=now,
            updated_at=now,
            finished_at=None,
            parent_id=parent_id,
        )
        return PendingStart(self, record, sent)

    def list_executions(self, **filters: Unpack[ListFilters]) -> builtins.list[ExecutionRecord]:
        """Newest first, up to ``limit`` (100). ``before``: the (created_at, id) a page ends
        at (keyset paging); ``status``: one, or any of several; ``since``: started then or
        later; ``id_prefix``: ids that start with it; ``tags``: runs that carry every one of
        these pairs; ``graph``, ``parent``: that one."""
        return [record for record, _ in self._listed(filters, with_tags=False)]

    def list_with_tags(
        self, **filters: Unpack[ListFilters]
    ) -> builtins.list[tuple[ExecutionRecord, dict[str, str]]]:
        """``list_executions``, each run with its tags, read by the same query."""
        return self._listed(filters, with_tags=True)

    def _listed(
        self, filters: ListFilters, *, with_tags: bool
    ) -> builtins.list[tuple[ExecutionRecord, dict[str, str]]]:
        query = _listing(filters)
        if with_tags:
            query = query.add_columns(tag_rows.of_each_run(self.db.embedded).label("tags"))
        with self.db.read() as conn:
            # A lookup by tags is planned for its values (Dialect.planned_for_values).
            planned = self.db.dialect.planned_for_values(conn) if filters.get("tags") else None
            with planned or nullcontext():
                rows = conn.execute(query).all()
        return [
            (execution_record(row, self.sealer), tag_rows.loaded(row.tags) if with_tags else {})
            for row in rows
        ]

    def tags_of(self, execution_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        """The tags of each run named, in one read; a run without tags is left out."""
        with self.db.read() as conn:
            return tag_rows.read(conn, execution_ids)

    def count_by_status(self) -> dict[str, int]:
        """Executions by status, over all graphs: what dashboards read."""
        return gauges.count_by_status(self.db)

    def children(self, parent: str, prefix: str = "") -> builtins.list[ExecutionRecord]:
        """The child runs of ``parent`` whose ids start with ``prefix``, in id order."""
        query = (
            select(executions)
            .where(executions.c.parent_id == parent, executions.c.id.startswith(prefix))
            .order_by(executions.c.id)
        )
        with self.db.read() as conn:
            return [execution_record(row, self.sealer) for row in conn.execute(query)]

    def count_children(self, parent: str, prefix: str, statuses: Iterable[Status]) -> int:
        query = select(func.count()).where(
            executions.c.parent_id == parent,
            executions.c.id.startswith(prefix),
            executions.c.status.in_([str(s) for s in statuses]),
        )
        with self.db.read() as conn:
            return int(conn.execute(query).scalar_one())

    def list_stale(
        self, older_than: datetime, limit: int = 100, *, include_swept: bool = False
    ) -> builtins.list[ExecutionRecord]:
        """Running or compensating executions with no commit since ``older_than`` (and, unless
        ``include_swept``, not re-dispatched by a sweep since then either)."""
        query = (
            select(executions)
            .where(executions.c.status.in_(ACTIVE_NAMES), executions.c.updated_at < older_than)
            .order_by(executions.c.updated_at)
            .limit(limit)
        )
        if not include_swept:
            query = query.where(
                or_(executions.c.swept_at.is_(None), executions.c.swept_at < older_than)
            )
        with self.db.read() as conn:
            return [execution_record(row, self.sealer) for row in conn.execute(query)]

    def touch(self, record: ExecutionRecord, now: datetime) -> bool:
        """Claim a stale execution for one sweeper: mark it swept, if nobody else did."""
        swept = (
            executions.c.swept_at.is_(None)
            if record.swept_at is None
            else executions.c.swept_at == record.swept_at
        )
        with self.db.engine.begin() as conn:
            result = conn.execute(
                update(executions)
                .where(executions.c.id == record.id, executions.c.version == record.version, swept)
                .values(swept_at=now)
            )
        return result.rowcount == 1

    def set_aside(self, execution_id: str, error: ErrorRecord, now: datetime) -> str | None:
        """Stop a run whose row cannot be trusted (it fails its checksum) for an operator:
        status needs_intervention, ``error`` saying why; returns its graph, or None when the
        run had ended or was already set aside. Nothing else of the row is rewritten: its
        checksum is not made to fit what it failed, so every read that decides still refuses
        it until a restart from a checkpoint that verifies rewrites it."""
        stops = [str(s) for s in Status if not s.finished and s != Status.NEEDS_INTERVENTION]
        with self.db.engine.begin() as conn:
            row = conn.execute(
                update(executions)
                .where(executions.c.id == execution_id, executions.c.status.in_(stops))
                .values(
                    status=str(Status.NEEDS_INTERVENTION),
                    error=codec.dumps(error),
                    updated_at=now,
                )
                .returning(executions.c.graph)
            ).first()
        return None if row is None else str(row.graph)

    def prune_batch(self, status: Status, finished_before: datetime, batch: int) -> int:
        """Delete up to ``batch`` runs of ``status`` finished before the cutoff, with every
        row they hold, in one transaction: a prune killed half-way leaves no orphans."""
        with run_rows.prune_batch(self.db, status, finished_before, batch) as found:
            found.remove(found.ids)
        return len(found.ids)

    def count_prunable(self, status: Status, finished_before: datetime) -> int:
        query = select(func.count()).where(
            executions.c.status == str(status), executions.c.finished_at < finished_before
        )
        with self.db.read() as conn:
            return int(conn.execute(query).scalar_one())

    # The soak tests' name for it.
    count_executions = count_by_status

    def execution_gauges(self, stuck_before: datetime) -> ExecutionGauges:
        """Everything the database metrics show (see ``gauges``)."""
        return gauges.execution_gauges(self.db, stuck_before)

    # -- checkpoints ------------------------------------------------------------------------

    def save(self, commit: Commit) -> Checkpoint:
        """Append a checkpoint and advance its execution, atomically, in one round trip;
        raises DuplicateCheckpoint, VersionConflict (with the execution as read) or LeaseLost
        when refused."""
        return self.send(commit).result()

    def send(self, commit: Commit) -> PendingCommit:
        """``save``, sent: returns before the database answers (PostgreSQL: nothing read yet;
        SQLite: run when collected), so the caller works meanwhile. Collect ``result()`` before this
        thread uses the store again (pending.py)."""
        advance = advance_row(commit, utcnow(), self.sealer)
        sent = self.db.dialect.send(
            self.db.engines,
            advance,
            fenced=commit.lease_token > 0,
            wakes=commit.status in ENDS_WAIT,
        )
        return PendingCommit(self, commit, advance, sent)

    @contextmanager
    def waiter(self, execution_id: str) -> Iterator[Waiter]:
        """Something with ``wait(timeout)`` that returns early when the run ends."""
        waiter = self.db.dialect.waiter(execution_id)
        try:
            yield waiter
        finally:
            waiter.close()


def _listing(filters: ListFilters) -> Select[Any]:
    """The query of ``list_executions``: newest first, by (created_at, id) or, given tags, by
    the first pair's copy of them (tag_rows.matching)."""
    c = executions.c
    query = select(executions)
    at: ColumnElement[Any] = c.created_at
    key: ColumnElement[Any] = c.id
    if tags := filters.get("tags"):
        query, at, key = tag_rows.matching(query, tags)
    query = query.order_by(at.desc(), key.desc()).limit(filters.get("limit", 100))
    if (before := filters.get("before")) is not None:
        # A row comparison, which an index range serves (an OR of the two would not).
        query = query.where(tuple_(at, key) < tuple_(*before))
    if id_prefix := filters.get("id_prefix"):
        query = query.where(c.id.startswith(id_prefix, autoescape=True))
    if (parent := filters.get("parent")) is not None:
        query = query.where(c.parent_id == parent)
    status = filters.get("status")
    if isinstance(status, str):
        query = query.where(c.status == str(status))
    elif status is not None:
        query = query.where(c.status.in_([str(s) for s in status]))
    if (graph := filters.get("graph")) is not None:
        query = query.where(c.graph == graph)
    if (since := filters.get("since")) is not None:
        query = query.where(at >= since)
    return query
