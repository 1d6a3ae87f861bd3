"""The committed position a run builds on, and the one way a commit is made from it.

Every checkpoint the engine writes (a node visit, a sub-step, a failure, a compensation, an
operator's change, a stranded run) is a ``Base.commit(...)``: the execution's next version,
checked against the one it was built on, keeping whatever the commit does not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from celery_durable.model.cursor import Cursor
from celery_durable.model.records import (
    Commit,
    ErrorRecord,
    ExecutionRecord,
    Kind,
)
from celery_durable.status import Status


class _Keep:
    """Marks an argument of Base.commit() left as the base has it."""


KEEP: Final = _Keep()


@dataclass(slots=True)
class Base:
    """A committed version of an execution: carried by a node's message, or read back."""

    version: int
    state: dict[str, Any]
    cursor: Cursor
    status: Status = Status.RUNNING
    error: ErrorRecord | None = None

    @classmethod
    def of(cls, record: ExecutionRecord) -> Base:
        return cls(
            record.version,
            record.state,
            record.cursor,
            record.status,
            record.error,
        )

    @classmethod
    def after(cls, commit: Commit) -> Base:
        """The base a commit produced: what is handed on after it."""
        return cls(commit.seq, commit.state, commit.cursor, commit.status, commit.error)

    def commit(
        self,
        execution_id: str,
        kind: Kind,
        node: str,
        visit: int,
        *,
        state: dict[str, Any] | None = None,
        cursor: Cursor | None = None,
        status: Status | None = None,
        error: ErrorRecord | _Keep | None = KEEP,
        output: Any = None,
        meta: dict[str, Any] | None = None,
        lease_token: int = 0,
        state_json: str | None = None,
    ) -> Commit:
        """The next version of the execution: this base with the changes given."""
        return Commit(
            execution_id=execution_id,
            expected_version=self.version,
            kind=kind,
            node=node,
            visit=visit,
            state=self.state if state is None else state,
            cursor=self.cursor if cursor is None else cursor,
            status=self.status if status is None else status,
            output=output,
            meta=meta,
            error=self.error if isinstance(error, _Keep) else error,
            lease_token=lease_token,
            state_json=state_json,
        )
