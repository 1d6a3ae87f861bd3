"""The checkpoint store: executions and their append-only checkpoints.

save() is the moment a node happened: one transaction inserts the checkpoint and advances the
execution, refused if the execution moved on (VersionConflict) or the visit is already
committed (DuplicateCheckpoint). Everything read back is checked against its checksum.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, delete, exists, func, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError

from celery_durable.errors import (
    CheckpointCorrupted,
    CheckpointNotFound,
    DuplicateCheckpoint,
    ExecutionNotFound,
    LeaseLost,
    VersionConflict,
)
from celery_durable.model.records import (
    Checkpoint,
    Commit,
    ExecutionRecord,
    utcnow,
)
from celery_durable.persistence import codec, gauges
from celery_durable.persistence.database import Database
from celery_durable.persistence.dialect import Waiter
from celery_durable.persistence.gauges import ACTIVE_NAMES, ExecutionGauges
from celery_durable.persistence.rows import (
    STATELESS,
    advance_row,
    checkpoint_record,
    execution_record,
    noticed_record,
    start_row,
)
from celery_durable.persistence.schema import checkpoints, events, executions, node_visits
from celery_durable.persistence.sealing import Sealer
from celery_durable.status import ENDS_WAIT, Status


class CheckpointStore:
    """save / load / latest / list / find, plus the execution rows."""

    def __init__(self, db: Database, sealer: Sealer | None = None) -> None:
        self.db = db
        self.sealer = sealer or Sealer()

    # -- executions -------------------------------------------------------------------------

    def create_execution(
        self,
        *,
        execution_id: str,
        graph: str,
        fingerprint: str,
        state: dict[str, Any],
        cursor: dict[str, Any],
        status: Status = Status.RUNNING,
        meta: dict[str, Any] | None = None,
        state_json: str | None = None,
        parent_id: str | None = None,
        meanwhile: Callable[[], object] | None = None,
    ) -> tuple[ExecutionRecord, bool]:
        """Insert an execution at version 0 with its start checkpoint; idempotent on the id.
        ``meanwhile`` runs during the round trip (Dialect.start).

        Returns the execution as stored and whether this call created it.
        """
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
        )
        if not self.db.dialect.start(self.db.engines, start, meanwhile):
            return self.get_execution(execution_id), False
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
        return record, True

    def get_execution(self, execution_id: str, verify: bool = True) -> ExecutionRecord:
        """The row, checked against its checksum unless the read decides nothing (``verify``)."""
        with self.db.read() as conn:
            row = conn.execute(select(executions).where(executions.c.id == execution_id)).first()
        if row is None:
            raise ExecutionNotFound(execution_id)
        return execution_record(row, self.sealer, verify=verify)

    def noticed(self, notice: dict[str, Any]) -> ExecutionRecord:
        """The row a waiter's notification carried, checked as ``get_execution`` checks."""
        return noticed_record(notice, self.sealer)

    def rebuilt(self, execution_id: str) -> ExecutionRecord:
        """An execution row that fails its checksum, as its newest checkpoint says it was
        (version, state, cursor; the rest as the row has it): what an operator's restart,
        which rewrites the row, starts from. The newest checkpoint must verify."""
        damaged = self.get_execution(execution_id, verify=False)
        latest = self.latest(execution_id)
        if latest is None:
            raise ExecutionNotFound(execution_id)
        state = self._state_in_effect(latest)
        return replace(damaged, version=latest.seq, state=state, cursor=latest.cursor)

    def list_executions(
        self,
        *,
        status: Status | str | Iterable[Status | str] | None = None,
        graph: str | None = None,
        since: datetime | None = None,
        parent: str | None = None,
        id_prefix: str | None = None,
        before: tuple[datetime, str] | None = None,
        limit: int = 100,
    ) -> builtins.list[ExecutionRecord]:
        """Newest first; ``before``: the (created_at, id) a page ends at (keyset paging)."""
        c = executions.c
        query = select(executions).order_by(c.created_at.desc(), c.id.desc()).limit(limit)
        if before is not None:
            at, last = before
            query = query.where(or_(c.created_at < at, and_(c.created_at == at, c.id < last)))
        if id_prefix:
            query = query.where(c.id.startswith(id_prefix, autoescape=True))
        if parent is not None:
            query = query.where(executions.c.parent_id == parent)
        if isinstance(status, str):
            query = query.where(executions.c.status == str(status))
        elif status is not None:
            query = query.where(executions.c.status.in_([str(s) for s in status]))
        if graph is not None:
            query = query.where(executions.c.graph == graph)
        if since is not None:
            query = query.where(executions.c.created_at >= since)
        with self.db.read() as conn:
            return [execution_record(row, self.sealer) for row in conn.execute(query)]

    def count_by_status(self) -> dict[str, int]:
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

    def prune_batch(self, status: Status, finished_before: datetime, batch: int) -> int:
        """Delete up to ``batch`` runs of ``status`` finished before the cutoff, with their
        checkpoints and visits, in one transaction: a prune killed half-way leaves no orphans.
        """
        with self.db.engine.begin() as conn:
            ids = (
                conn.execute(
                    select(executions.c.id)
                    .where(
                        executions.c.status == str(status),
                        executions.c.finished_at < finished_before,
                    )
                    .limit(batch)
                )
                .scalars()
                .all()
            )
            if not ids:
                return 0
            for table in (node_visits, events, checkpoints):
                conn.execute(delete(table).where(table.c.execution_id.in_(ids)))
            conn.execute(delete(executions).where(executions.c.id.in_(ids)))
        return len(ids)

    def count_prunable(self, status: Status, finished_before: datetime) -> int:
        query = select(func.count()).where(
            executions.c.status == str(status), executions.c.finished_at < finished_before
        )
        with self.db.read() as conn:
            return int(conn.execute(query).scalar_one())

    def count_executions(self) -> dict[str, int]:
        """Executions by status: what dashboards and metrics read."""
        query = select(executions.c.status, func.count()).group_by(executions.c.status)
        with self.db.read() as conn:
            return {row[0]: row[1] for row in conn.execute(query)}

    def execution_gauges(self, stuck_before: datetime) -> ExecutionGauges:
        """Everything the database metrics show (see ``gauges``)."""
        return gauges.execution_gauges(self.db, stuck_before)

    # -- checkpoints ------------------------------------------------------------------------

    def save(self, commit: Commit, meanwhile: Callable[[], object] | None = None) -> Checkpoint:
        """Append a checkpoint and advance its execution, atomically, in one round trip;
        ``meanwhile`` runs during it (Dialect.save)."""
        now = utcnow()
        advance = advance_row(commit, now, self.sealer)
        try:
            written = self.db.dialect.save(
                self.db.engines,
                advance,
                fenced=commit.lease_token > 0,
                wakes=commit.status in ENDS_WAIT,
                meanwhile=meanwhile,
            )
        except IntegrityError as exc:
            raise DuplicateCheckpoint(
                commit.execution_id, commit.kind, commit.node, commit.visit
            ) from exc
        if not written:
            raise self._why_refused(commit)
        return Checkpoint(
            execution_id=commit.execution_id,
            seq=advance["seq"],
            kind=commit.kind,
            node=commit.node,
            visit=commit.visit,
            state=None if commit.kind in STATELESS else commit.state,
            cursor=commit.cursor,
            output=commit.output,
            meta=commit.meta,
            checksum=advance["checksum"],
            created_at=now,
        )

    def _why_refused(self, commit: Commit) -> Exception:
        """Off the happy path: tell a stale version from a duplicate, a lost lease or a missing
        execution, in one read. A conflict carries the execution as read, for the rebase:
        parallel branches meet this on every other commit."""
        committed = (
            exists()
            .where(
                checkpoints.c.execution_id == commit.execution_id,
                checkpoints.c.kind == commit.kind,
                checkpoints.c.node == commit.node,
                checkpoints.c.visit == commit.visit,
            )
            .label("committed")
        )
        query = select(executions, committed).where(executions.c.id == commit.execution_id)
        with self.db.read() as conn:
            row = conn.execute(query).first()
        if row is None:
            return ExecutionNotFound(commit.execution_id)
        if row.committed:
            return DuplicateCheckpoint(commit.execution_id, commit.kind, commit.node, commit.visit)
        record = execution_record(row, self.sealer, verify=True)
        if record.version == commit.expected_version and commit.lease_token > 0:
            return LeaseLost(commit.execution_id, commit.node, commit.visit, commit.lease_token)
        return VersionConflict(commit.execution_id, commit.expected_version, record)

    def load(self, execution_id: str, seq: int) -> Checkpoint:
        query = select(checkpoints).where(
            checkpoints.c.execution_id == execution_id, checkpoints.c.seq == seq
        )
        with self.db.read() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise CheckpointNotFound(execution_id, seq)
        return checkpoint_record(row, self.sealer)

    def state_at(self, execution_id: str, seq: int) -> tuple[Checkpoint, dict[str, Any]]:
        """Checkpoint ``seq`` and the state in effect there: a step, a wait or a wake records
        none, so theirs is that of the last checkpoint before them that does."""
        checkpoint = self.load(execution_id, seq)
        return checkpoint, self._state_in_effect(checkpoint)

    def _state_in_effect(self, checkpoint: Checkpoint) -> dict[str, Any]:
        if checkpoint.state is not None:
            return checkpoint.state
        execution_id, seq = checkpoint.execution_id, checkpoint.seq
        query = (
            select(checkpoints)
            .where(
                checkpoints.c.execution_id == execution_id,
                checkpoints.c.seq < seq,
                checkpoints.c.kind.not_in([str(k) for k in STATELESS]),
            )
            .order_by(checkpoints.c.seq.desc())
            .limit(1)
        )
        with self.db.read() as conn:
            row = conn.execute(query).first()
        state = None if row is None else checkpoint_record(row, self.sealer).state
        if state is None:  # a start checkpoint always records one: pruned?
            raise CheckpointNotFound(execution_id, seq)
        return state

    def latest(self, execution_id: str) -> Checkpoint | None:
        query = (
            select(checkpoints)
            .where(checkpoints.c.execution_id == execution_id)
            .order_by(checkpoints.c.seq.desc())
            .limit(1)
        )
        with self.db.read() as conn:
            row = conn.execute(query).first()
        return None if row is None else checkpoint_record(row, self.sealer)

    def list(
        self,
        execution_id: str,
        *,
        kinds: Iterable[str] | None = None,
        after: int | None = None,
        contain: bool = False,
    ) -> builtins.list[Checkpoint]:
        """The execution's checkpoints, oldest first; ``after`` skips seq up to and including it;
        ``contain``: corrupted ones marked instead of raising (for display)."""
        query = (
            select(checkpoints)
            .where(checkpoints.c.execution_id == execution_id)
            .order_by(checkpoints.c.seq)
        )
        if kinds is not None:
            query = query.where(checkpoints.c.kind.in_(builtins.list(kinds)))
        if after is not None:
            query = query.where(checkpoints.c.seq > after)
        with self.db.read() as conn:
            return [checkpoint_record(row, self.sealer, contain) for row in conn.execute(query)]

    def verify(self, since: datetime | None = None) -> builtins.list[tuple[str, int, str]]:
        """Every checkpoint and execution row (written since ``since``) against its checksum:
        (execution, seq, "checkpoint" or "row") of each that does not match."""
        c, e = checkpoints.c, executions.c
        damaged: builtins.list[tuple[str, int, str]] = []
        after = None if since is None else c.created_at >= since
        for row in self._pages(checkpoints, (c.execution_id, c.seq), after):
            if checkpoint_record(row, self.sealer, contain=True).corrupted:
                damaged.append((row.execution_id, row.seq, "checkpoint"))
        for row in self._pages(
            executions, (e.id,), None if since is None else e.updated_at >= since
        ):
            try:
                execution_record(row, self.sealer, verify=True)
            except CheckpointCorrupted:
                damaged.append((row.id, row.version, "row"))
        return damaged

    def _pages(
        self, table: Any, key: tuple[Any, ...], where: Any, size: int = 1000
    ) -> Iterator[Row[Any]]:
        """All rows of ``table`` in ``key`` order, a page at a time (keyset)."""
        last: tuple[Any, ...] | None = None
        while True:
            query = select(table).order_by(*key).limit(size)
            if where is not None:
                query = query.where(where)
            if last is not None:
                query = query.where(tuple_(*key) > tuple_(*last))
            with self.db.read() as conn:
                rows = conn.execute(query).all()
            yield from rows
            if len(rows) < size:
                return
            last = tuple(getattr(rows[-1], col.name) for col in key)

    def find(self, execution_id: str, kind: str, node: str, visit: int) -> Checkpoint | None:
        """The checkpoint of one node visit, if it was committed."""
        query = select(checkpoints).where(
            checkpoints.c.execution_id == execution_id,
            checkpoints.c.kind == kind,
            checkpoints.c.node == node,
            checkpoints.c.visit == visit,
        )
        with self.db.read() as conn:
            row = conn.execute(query).first()
        return None if row is None else checkpoint_record(row, self.sealer)

    @contextmanager
    def waiter(self, execution_id: str) -> Iterator[Waiter]:
        """Something with ``wait(timeout)`` that returns early when the run ends."""
        waiter = self.db.dialect.waiter(execution_id)
        try:
            yield waiter
        finally:
            waiter.close()
