"""What every durable task attempt shares, node or compensation: the committed base it builds
on, redelivery handling with its cap, crash-proof attempt counting and retry scheduling, and
the commit loop that rebases on a version conflict.
"""

from __future__ import annotations

import functools
import logging
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from celery_durable.engine.base import MAX_COMMIT_TRIES, Base
from celery_durable.engine.context import Context, Memo
from celery_durable.engine.leases import worker_id
from celery_durable.engine.runtime import Runtime
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
    # The flow control hold this attempt was sent again after (see engine/flow.py).
    passed: str | None = None

    @property
    def key(self) -> tuple[str, Kind, str, int]:
        return (self.execution_id, self.kind, self.name, self.visit)

    # Subclasses decide how to run, and what "still due", "replay" and "give up" mean.
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
        )

    # -- shared protocol --------------------------------------------------------------------

    def before_rerun(self) -> Outcome | None:
        """A redelivered message: replay if committed, cap poison, defer to a live lease."""
        runtime = self.runtime
        record = runtime.visits.record_redelivery(*self.key)
        existing = runtime.store.find(*self.key)
        if existing is not None:
            return self.replay(existing)
        if record.redeliveries > runtime.settings.max_redeliveries:
            message = (
                f"the message of {self.kind} {self.name!r} was redelivered "
                f"{record.redeliveries} times (a worker died each time it ran)"
            )
            return self.give_up(error_record("PoisonMessage", message, self.name))
        if record.lease_expires_at is not None and record.lease_expires_at > utcnow():
            logger.info("%s: a live attempt holds the lease; this copy steps aside", self.key)
            return Outcome.DROPPED
        self.attempt = max(self.attempt, record.attempts + 1)
        return self.refresh()

    def refresh(self, record: ExecutionRecord | None = None) -> Outcome | None:
        """Rebase on the execution as committed (``record``, if just read); None to go on,
        else why to stop."""
        self.base = Base.of(record or self.runtime.store.get_execution(self.execution_id))
        if self.base.status not in self.live or not self.is_due(self.base):
            return Outcome.DROPPED
        return None

    def save(
        self,
        build: Callable[[], Commit | Outcome],
        meanwhile: Callable[[Commit], object] | None = None,
    ) -> Commit | Outcome:
        """Commit what ``build`` makes from the current base, rebasing on version conflicts;
        ``meanwhile(commit)`` runs while each commit is in flight (Dialect.save).

        Returns the commit, or the outcome that says why nothing was committed.
        """
        store = self.runtime.store
        for _ in range(MAX_COMMIT_TRIES):
            commit = build()
            if isinstance(commit, Outcome):
                return commit
            during = None if meanwhile is None else functools.partial(meanwhile, commit)
            started = time.perf_counter()
            try:
                store.save(commit, during)
            except DuplicateCheckpoint:
                # Another copy of this visit committed first and is dispatching what follows.
                # Only a redelivered copy replays: its first run may have died before that.
                existing = store.find(*self.key)
                return self.replay(existing) if self.redelivered and existing else Outcome.DUPLICATE
            except LeaseLost:
                return Outcome.DROPPED
            except VersionConflict as conflict:
                if (reason := self.refresh(conflict.current)) is not None:
                    return reason
                continue
            self.runtime.hooks.checkpoint_written(
                self.graph.name, commit.node, commit.kind, time.perf_counter() - started
            )
            return commit
        raise VersionConflict(self.execution_id, self.base.version)

    def failed(self, exc: BaseException, policy: RetryPolicy, permanent: bool = False) -> Outcome:
        """Count the failure in the database; retry per ``policy`` or give up."""
        error = describe(exc, self.name, self.attempt)
        visits = self.runtime.visits
        if permanent or not policy.should_retry(exc, self.attempt):
            visits.record_failure(*self.key, error=dict(error), due_at=None)
            return self.give_up(error)
        delay = policy.next_delay(self.attempt, random.Random())
        in_db = delay > self.runtime.settings.eta_threshold
        due_at = utcnow() + timedelta(seconds=delay) if in_db else None
        attempts = visits.record_failure(*self.key, error=dict(error), due_at=due_at)
        if attempts >= policy.max_attempts:
            # Another copy counted attempts too: the database says this was the last one.
            if in_db:
                visits.clear_due(*self.key)
            return self.give_up(error)
        self.runtime.hooks.node_retrying(self.graph.name, self.name, exc, delay)
        logger.warning(
            "%s %s.%s visit %d attempt %d failed (%s); retry in %.2fs",
            self.kind,
            self.graph.name,
            self.name,
            self.visit,
            attempts,
            error["message"],
            delay,
        )
        if not in_db:
            self.redispatch(attempts + 1, delay)
        return Outcome.RETRYING


def describe(exc: BaseException, node: str, attempt: int) -> ErrorRecord:
    """An error as stored: type, message, where, which attempt, and the end of the traceback."""
    tb = "".join(traceback.format_exception(exc, limit=8))
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "node": node,
        "attempt": attempt,
        "traceback": tb[-4000:],
    }
