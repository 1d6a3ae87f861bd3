"""What every durable task attempt shares, node or compensation: the committed base it builds
on, redelivery handling with its cap, crash-proof attempt counting and retry scheduling, and
the commit loop that rebases on a version conflict.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from celery_durable.errors import DuplicateCheckpoint, LeaseLost, VersionConflict
from celery_durable.persistence.records import Checkpoint, Commit, ExecutionRecord, utcnow
from celery_durable.saga.coordinator import Cursor
from celery_durable.saga.retry import RetryPolicy
from celery_durable.status import Status

if TYPE_CHECKING:
    from celery_durable.durable import Durable
    from celery_durable.tasks.graph import Graph

logger = logging.getLogger(__name__)

MAX_COMMIT_TRIES = 50


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Superseded(BaseException):
    """The run moved on under this attempt (cancelled, rewound): stop, commit nothing.

    A BaseException so that a node's ``except Exception`` cannot swallow it by accident.
    """


@dataclass(slots=True)
class Base:
    """The committed execution an attempt builds on: carried by its message, or reloaded."""

    version: int
    state: dict[str, Any]
    cursor: Cursor
    status: Status = Status.RUNNING
    error: dict[str, Any] | None = None

    @classmethod
    def of(cls, record: ExecutionRecord) -> Base:
        return cls(
            record.version,
            record.state,
            Cursor.from_json(record.cursor),
            record.status,
            record.error,
        )


@dataclass(slots=True)
class Attempt:
    """One attempt of one visit of a node or of its compensation."""

    kind: ClassVar[str]
    # Statuses in which this kind of attempt may still commit.
    live: ClassVar[frozenset[Status]]

    durable: Durable
    graph: Graph
    name: str
    execution_id: str
    visit: int
    base: Base
    attempt: int = 1
    redelivered: bool = False

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.execution_id, self.kind, self.name, self.visit)

    # Subclasses decide how to run, and what "still due", "replay" and "give up" mean.
    def execute(self) -> str:
        raise NotImplementedError

    def is_due(self, base: Base) -> bool:
        raise NotImplementedError

    def replay(self, checkpoint: Checkpoint) -> str:
        raise NotImplementedError

    def give_up(self, error: dict[str, Any]) -> str:
        raise NotImplementedError

    def redispatch(self, attempt: int, countdown: float, *, recovered: bool = False) -> None:
        """Publish this visit again for its next attempt."""
        self.durable.dispatch(
            self.graph,
            self.name,
            self.visit,
            self.execution_id,
            self.base,
            attempt=attempt,
            countdown=countdown,
            compensation=self.kind != "node",
            recovered=recovered,
        )

    # -- shared protocol --------------------------------------------------------------------

    def before_rerun(self) -> str | None:
        """A redelivered message: replay if committed, cap poison, defer to a live lease."""
        record = self.durable.visits.record_redelivery(*self.key)
        existing = self.durable.store.find(*self.key)
        if existing is not None:
            return self.replay(existing)
        if record.redeliveries > self.durable.settings.max_redeliveries:
            return self.give_up(
                {
                    "type": "PoisonMessage",
                    "message": f"the message of {self.kind} {self.name!r} was redelivered "
                    f"{record.redeliveries} times (a worker died each time it ran)",
                    "node": self.name,
                }
            )
        if record.lease_expires_at is not None and record.lease_expires_at > utcnow():
            logger.info("%s: a live attempt holds the lease; this copy steps aside", self.key)
            return "dropped"
        self.attempt = max(self.attempt, record.attempts + 1)
        return self.refresh()

    def refresh(self) -> str | None:
        """Rebase on the execution as committed; None to go on, else why to stop."""
        self.base = Base.of(self.durable.store.get_execution(self.execution_id))
        if self.base.status not in self.live or not self.is_due(self.base):
            return "dropped"
        return None

    def save(self, build: Callable[[], Commit | str]) -> Commit | str:
        """Commit what ``build`` makes from the current base, rebasing on version conflicts.

        Returns the commit, or a string saying why nothing was committed.
        """
        for _ in range(MAX_COMMIT_TRIES):
            commit = build()
            if isinstance(commit, str):
                return commit
            started = time.perf_counter()
            try:
                self.durable.store.save(commit)
            except DuplicateCheckpoint:
                # Another copy of this visit committed first and is dispatching what follows.
                # Only a redelivered copy replays: its first run may have died before that.
                existing = self.durable.store.find(*self.key)
                return self.replay(existing) if self.redelivered and existing else "duplicate"
            except LeaseLost:
                return "dropped"
            except VersionConflict:
                if (reason := self.refresh()) is not None:
                    return reason
                continue
            self.durable.hooks.checkpoint_written(
                self.graph.name, commit.node, commit.kind, time.perf_counter() - started
            )
            return commit
        raise VersionConflict(self.execution_id, self.base.version)

    def failed(self, exc: BaseException, policy: RetryPolicy, permanent: bool = False) -> str:
        """Count the failure in the database; retry per ``policy`` or give up."""
        error = describe(exc, self.name, self.attempt)
        visits = self.durable.visits
        if not permanent and policy.is_retryable(exc) and self.attempt < policy.max_attempts:
            delay = policy.next_delay(self.attempt, random.Random())
            in_db = delay > self.durable.settings.eta_threshold
            due_at = utcnow() + timedelta(seconds=delay) if in_db else None
            attempts = visits.record_failure(*self.key, error=error, due_at=due_at)
            if attempts < policy.max_attempts:
                self.durable.hooks.node_retrying(self.graph.name, self.name, exc, delay)
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
                return "retrying"
            if in_db:
                visits.clear_due(*self.key)  # the database says this was the last attempt
        else:
            visits.record_failure(*self.key, error=error, due_at=None)
        return self.give_up(error)


def describe(exc: BaseException, node: str, attempt: int) -> dict[str, Any]:
    """An error as stored: type, message, where, which attempt, and the end of the traceback."""
    tb = "".join(traceback.format_exception(exc, limit=8))
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "node": node,
        "attempt": attempt,
        "traceback": tb[-4000:],
    }
