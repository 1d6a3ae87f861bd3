"""Writes sent and not yet answered: what ``CheckpointStore.send`` and ``send_start`` return.

The caller does its own work while the database commits (builds the next node's message),
then collects ``result()``. The rule: collect it before this thread uses the store again. On
PostgreSQL the statement is outstanding on the thread's held connection, which takes one at a
time; the thread's next send finds one uncollected, collects it first and keeps its answer
in its handle.
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from celery_durable.errors import DuplicateCheckpoint
from celery_durable.model.records import Checkpoint, Commit, ExecutionRecord
from celery_durable.persistence.answer import Answer
from celery_durable.persistence.dialect import Advance
from celery_durable.persistence.history import RunHistory
from celery_durable.persistence.rows import STATELESS


class PendingCommit(Answer[Checkpoint]):
    """A node commit on its way. ``result()`` is the checkpoint as stored, or raises what
    ``CheckpointStore.save`` raises: DuplicateCheckpoint, VersionConflict (with the
    execution as read), LeaseLost, ExecutionNotFound."""

    def __init__(
        self,
        history: RunHistory,
        commit: Commit,
        advance: Advance,
        sent: Answer[bool],
    ) -> None:
        self._history = history
        self._commit = commit
        self._advance = advance
        self._sent = sent

    def _collect(self) -> Checkpoint:
        commit, advance = self._commit, self._advance
        try:
            written = self._sent.result()
        except IntegrityError as exc:
            raise DuplicateCheckpoint(
                commit.execution_id, commit.kind, commit.node, commit.visit
            ) from exc
        if not written:
            raise self._history.why_refused(commit)
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
            created_at=advance["now"],
        )


class PendingStart(Answer[tuple[ExecutionRecord, bool]]):
    """A new execution on its way. ``result()`` is the execution as stored and whether this
    start created it (False: the id existed; the record is the one stored)."""

    def __init__(self, history: RunHistory, record: ExecutionRecord, sent: Answer[bool]) -> None:
        self._history = history
        self._record = record
        self._sent = sent

    def _collect(self) -> tuple[ExecutionRecord, bool]:
        if not self._sent.result():
            return self._history.get_execution(self._record.id), False
        return self._record, True
