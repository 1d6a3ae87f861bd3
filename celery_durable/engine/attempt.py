"""What every durable task attempt shares, node or compensation: the committed base it builds
on, redelivery handling with its cap, and the commit that rebases on a version conflict.

An attempt's failures are the failure stage's (engine/failure.py); what a node attempt does
between its message and its ack is engine/node_run.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from celery_durable import tracing
from celery_durable.engine.base import Base
from celery_durable.engine.context import Context, Memo
from celery_durable.engine.leases import worker_id
from celery_durable.engine.rebase import until_committed
from celery_durable.engine.runtime import Runtime
from celery_durable.engine.stream import Emitter
from celery_durable.errors import DuplicateCheckpoint, LeaseLost, VersionConflict
from celery_durable.model.records import (
    Checkpoint,
    Commit,
    ErrorRecord,
    ExecutionRecord,
    Kind,
    error_record,
    utcnow,
)
from celery_durable.policies.retry import RetryPolicy
from celery_durable.status import Status

if TYPE_CHECKING:
    from celery_durable.engine.definition import GraphDefinition as Graph
    from celery_durable.persistence.pending import PendingCommit

logger = logging.getLogger(__name__)


class Outcome(StrEnum):
    """What became of one attempt: the task's result, for logs, Flower and tests."""

    COMMITTED = "committed"
    REPLAYED = "replayed"
    DUPLICATE = "duplicate"
    DROPPED = "dropped"
    RETRYING = "retrying"
    FAILED = "failed"
    NEEDS_INTERVENTION = "needs_intervention"
    DEFERRED = "deferred"
    WAITING = "waiting"
    HELD = "held"


class Suspend(BaseException):
    """The node visit waits (its wait is committed): end the attempt, ack the message.

    A BaseException, like Superseded, so that a node's ``except Exception`` cannot swallow it.
    """


class Superseded(BaseException):
    """The run moved on under this attempt (cancelled, rewound): stop, commit nothing.

    A BaseException so that a node's ``except Exception`` cannot swallow it by accident.
    """


@dataclass(slots=True)
class Attempt:
    """One attempt of one visit of a node or of its compensation."""

    kind: ClassVar[Kind]
    # Statuses in which this kind of attempt may still commit.
    live: ClassVar[frozenset[Status]]

    runtime: Runtime
    graph: Graph
    name: str
    execution_id: str
    visit: int
    base: Base
    attempt: int = 1
    redelivered: bool = False
    # The flow control hold this attempt was sent again after (see engine/admission.py).
    passed: str | None = None
    # How the attempt went wrong, if it did, and in how many seconds it is retried: what the
    # task reports (Flower's FAILURE and RETRY, with the exception and its traceback).
    failed: BaseException | None = None
    retry_in: float | None = None

    @property
    def key(self) -> tuple[str, Kind, str, int]:
        return (self.execution_id, self.kind, self.name, self.visit)

    # Subclasses decide how to run, and what "still due", "replay" and "give up" mean.
    @property
    def policy(self) -> RetryPolicy:
        raise NotImplementedError

    def execute(self) -> Outcome:
        raise NotImplementedError

    def is_due(self, base: Base) -> bool:
        raise NotImplementedError

    def replay(self, checkpoint: Checkpoint) -> Outcome:
        raise NotImplementedError

    def give_up(self, error: ErrorRecord) -> Outcome:
        raise NotImplementedError

    def redispatch(
        self, attempt: int, countdown: float, *, recovered: bool = False, passed: str | None = None
    ) -> None:
        """Publish this visit again for its next attempt (or, held back, for this one)."""
        self.runtime.dispatcher.dispatch(
            self.graph.name,
            self.name,
            self.visit,
            self.execution_id,
            self.base,
            attempt=attempt,
            countdown=countdown,
            compensation=self.kind == Kind.COMPENSATION,
            recovered=recovered,
            passed=passed,
        )

    def commit(
        self,
        kind: Kind,
        *,
        node: str | None = None,
        visit: int | None = None,
        meta: dict[str, Any] | None = None,
        **changes: Any,
    ) -> Commit:
        """A commit of this attempt on its base, saying which attempt and worker made it."""
        return self.base.commit(
            self.execution_id,
            kind,
            self.name if node is None else node,
            self.visit if visit is None else visit,
            meta={"attempt": self.attempt, "worker": worker_id(), **(meta or {})},
            **changes,
        )

    def context(self, memo: Memo | None) -> Context:
        """What the user's function sees besides the state. The idempotency key names the
        visit, not the attempt: retries and redeliveries pass the same one on."""
        suffix = ":compensate" if self.kind == Kind.COMPENSATION else ""
        return Context(
            memo,
            execution_id=self.execution_id,
            node=self.name,
            visit=self.visit,
            attempt=self.attempt,
            idempotency_key=f"{self.execution_id}:{self.name}:{self.visit}{suffix}",
            publisher=Emitter(
                self.runtime, self.kind, self.execution_id, self.name, self.visit, self.attempt
            ),
        )

    # -- replay: a copy that may have run before -------------------------------------------

    def before_rerun(self) -> Outcome | None:
        """A redelivered message: replay if committed, cap poison, defer to a live lease."""
        runtime = self.runtime
        record = runtime.visits.record_redelivery(*self.key)
        existing = runtime.store.find(*self.key)
        if existing is not None:
            return self.replay(existing)
        if record.redeliveries > runtime.settings.max_redeliveries:
            # Failed from the row as committed, verified: never from the message's state.
            if (stop := self.refresh()) is not None:
                return stop
            message = (
                f"the message of {self.kind} {self.name!r} was redelivered "
                f"{record.redeliveries} times (a worker died each time it ran)"
            )
            return self.give_up(error_record("PoisonMessage", message, self.name))
        if record.lease_expires_at is not None and record.lease_expires_at > utcnow():
            logger.info("%s: a live attempt holds the lease; this copy steps aside", self.key)
            return Outcome.DROPPED
        self.attempt = max(self.attempt, record.attempts + 1)
        row = runtime.store.get_execution(self.execution_id)
        if (stop := self.refresh(row)) is not None:
            return stop
        lag = (utcnow() - row.updated_at).total_seconds()
        runtime.hooks.recovery_lag(self.graph.name, self.name, lag)
        return None

    def refresh(self, record: ExecutionRecord | None = None) -> Outcome | None:
        """Rebase on the execution as committed (``record``, if just read); None to go on,
        else why to stop."""
        self.base = Base.of(record or self.runtime.store.get_execution(self.execution_id))
        if self.base.status not in self.live or not self.is_due(self.base):
            return Outcome.DROPPED
        moved = self.base.cursor.graph_version
        if moved is not None and moved != self.graph.version:
            # Upgraded under this attempt: the visit is dispatched on its new version.
            return Outcome.DROPPED
        return None

    # -- commit -----------------------------------------------------------------------------

    def rebase(self, conflict: VersionConflict | None) -> Outcome | None:
        """Before a commit is built again: take the row the conflict found; None to go on."""
        return None if conflict is None else self.refresh(conflict.current)

    def collect(self, pending: PendingCommit, commit: Commit, started: float) -> Outcome | None:
        """The answer to a commit in flight: None when it landed, else why nothing was
        committed. A conflict is raised on, for ``until_committed`` to rebase."""
        try:
            pending.result()
        except DuplicateCheckpoint:
            # Another copy of this visit committed first and is dispatching what follows.
            # Only a redelivered copy replays: its first run may have died before that.
            existing = self.runtime.store.find(*self.key)
            return self.replay(existing) if self.redelivered and existing else Outcome.DUPLICATE
        except LeaseLost:
            return Outcome.DROPPED
        took = time.perf_counter() - started
        self.runtime.hooks.checkpoint_written(self.graph.name, commit.node, commit.kind, took)
        tracing.finished(
            "durable.commit",
            took,
            {"kind": str(commit.kind), "seq": commit.seq, "node": commit.node},
        )
        return None

    def save(self, build: Callable[[], Commit]) -> Commit | Outcome:
        """Commit what ``build`` makes from the current base, rebasing on version conflicts.

        Returns the commit, or the outcome that says why nothing was committed.
        """

        def once(conflict: VersionConflict | None) -> Commit | Outcome:
            if (stop := self.rebase(conflict)) is not None:
                return stop
            commit = build()
            started = time.perf_counter()
            stop = self.collect(self.runtime.store.send(commit), commit, started)
            return commit if stop is None else stop

        return until_committed(self.execution_id, once)
