"""One run as stored, read back: its execution row and its checkpoints (the history that
time travel, forks and audits read), each checked against its checksum."""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Row, exists, func, select, tuple_

from celery_durable.errors import (
    CheckpointCompacted,
    CheckpointCorrupted,
    CheckpointNotFound,
    DuplicateCheckpoint,
    ExecutionNotFound,
    LeaseLost,
    VersionConflict,
)
from celery_durable.model.records import Checkpoint, Commit, ExecutionRecord
from celery_durable.persistence.database import Database
from celery_durable.persistence.rows import (
    STATELESS,
    checkpoint_record,
    execution_record,
    noticed_record,
)
from celery_durable.persistence.schema import checkpoints, executions
from celery_durable.persistence.sealing import Sealer


class RunHistory:
    """get_execution / load / latest / list / find: the reads of one run."""

    def __init__(self, db: Database, sealer: Sealer | None = None) -> None:
        self.db = db
        self.sealer = sealer or Sealer()

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

    def why_refused(self, commit: Commit) -> Exception:
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
            raise self._missing(execution_id, seq)
        return checkpoint_record(row, self.sealer)

    def _missing(self, execution_id: str, seq: int) -> CheckpointNotFound:
        """Why checkpoint ``seq`` is not there: every seq up to the run's version was
        committed, so one of those was compacted (a graph's keep_checkpoints)."""
        record = self.get_execution(execution_id, verify=False)
        if 0 <= seq <= record.version:
            return CheckpointCompacted(execution_id, seq)
        return CheckpointNotFound(execution_id, seq)

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
            # Every checkpoint between that one and ``seq`` must still be there: one that was
            # compacted may have recorded the state in effect.
            between = (
                None
                if row is None
                else conn.execute(
                    select(func.count()).where(
                        checkpoints.c.execution_id == execution_id,
                        checkpoints.c.seq > row.seq,
                        checkpoints.c.seq < seq,
                    )
                ).scalar_one()
            )
        if row is None or between != seq - row.seq - 1:
            raise CheckpointCompacted(execution_id, seq, state_from=True)
        state = checkpoint_record(row, self.sealer).state
        assert state is not None
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
        visit: int | None = None,
        contain: bool = False,
    ) -> builtins.list[Checkpoint]:
        """The execution's checkpoints, oldest first; ``after`` skips seq up to and including it;
        ``visit``: those of visits numbered so only (what a visit's memo reads, however long
        the run); ``contain``: corrupted ones marked instead of raising (for display)."""
        query = (
            select(checkpoints)
            .where(checkpoints.c.execution_id == execution_id)
            .order_by(checkpoints.c.seq)
        )
        if kinds is not None:
            query = query.where(checkpoints.c.kind.in_(builtins.list(kinds)))
        if after is not None:
            query = query.where(checkpoints.c.seq > after)
        if visit is not None:
            query = query.where(checkpoints.c.visit == visit)
        with self.db.read() as conn:
            return [checkpoint_record(row, self.sealer, contain) for row in conn.execute(query)]

    def verify(self, since: datetime | None = None) -> builtins.list[tuple[str, int, str]]:
        """Every checkpoint and execution row (written since ``since``) against its checksum:
        (execution, seq, "checkpoint" or "row") of each that does not match."""
        c, e = checkpoints.c, executions.c
        damaged: builtins.list[tuple[str, int, str]] = []
        after = None if since is None else c.created_at >= since
        for row in self.pages(checkpoints, (c.execution_id, c.seq), after):
            if checkpoint_record(row, self.sealer, contain=True).corrupted:
                damaged.append((row.execution_id, row.seq, "checkpoint"))
        for row in self.pages(
            executions, (e.id,), None if since is None else e.updated_at >= since
        ):
            try:
                execution_record(row, self.sealer, verify=True)
            except CheckpointCorrupted:
                damaged.append((row.id, row.version, "row"))
        return damaged

    def pages(
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
