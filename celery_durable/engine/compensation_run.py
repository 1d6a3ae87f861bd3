"""Compensation attempts: undo a saga's committed steps, newest first, one at a time, each a
Celery task whose commit is a checkpoint, so a crash resumes at the next step still to undo and
never undoes one twice. Which step is due is decided in ``saga.compensation``.

A compensation that fails for good stops the run in ``needs_intervention`` (an ERROR log
line, the ``intervention_required`` signal, a hook) until an operator retries or skips it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import ClassVar

from celery_durable import faults
from celery_durable.coroutines import settled
from celery_durable.engine import wakeups
from celery_durable.engine.attempt import Attempt, Outcome, Superseded
from celery_durable.engine.base import Base
from celery_durable.engine.deadline import time_limit
from celery_durable.engine.failure import Failure, fail, needs_intervention
from celery_durable.engine.operations import Operations
from celery_durable.engine.state import fit
from celery_durable.errors import InvalidTransition
from celery_durable.model.records import Checkpoint, Commit, ErrorRecord, Kind
from celery_durable.policies.retry import RetryPolicy
from celery_durable.saga import compensation
from celery_durable.status import Status

logger = logging.getLogger("celery_durable.saga")
# A child saga in one of these is compensated when the parent step that started it is undone.
UNDOABLE = frozenset(
    {Status.RUNNING, Status.PAUSED, Status.WAITING, Status.FAILED, Status.SUCCEEDED}
)


def start_compensating(run: Attempt, error: ErrorRecord) -> Outcome:
    """A saga step failed for good: keep the error, start undoing what committed."""

    def build() -> Commit:
        base = run.base
        cursor = base.cursor.copy()
        if (run.name, run.visit) in cursor.frontier:
            cursor.frontier.remove((run.name, run.visit))
        if base.status != Status.COMPENSATING:
            history = run.runtime.store.list(run.execution_id, kinds=[Kind.NODE, Kind.COMPENSATION])
            cursor.undo = compensation.plan(run.graph, history)
        return run.commit(
            Kind.FAILURE,
            cursor=cursor,
            status=compensation.status_of(cursor),
            # A compensation requested earlier keeps its reason as the run's error.
            error=base.error if base.status == Status.COMPENSATING else error,
        )

    commit = run.save(build)
    if isinstance(commit, Outcome):
        return commit
    logger.warning(
        "saga %s %s: step %s failed (%s); compensating",
        run.graph.name,
        run.execution_id,
        run.name,
        error["message"],
    )
    _after(run, commit)
    return Outcome.FAILED


def _after(run: Attempt, commit: Commit) -> None:
    if commit.status == Status.COMPENSATED:
        parent = commit.cursor.parent
        wakeups.finished(run.runtime, run.execution_id, run.graph.name, commit.status, parent)
    else:
        run.runtime.dispatch_undo(run.graph.name, run.execution_id, Base.after(commit))


@dataclass(slots=True)
class CompensationRun(Attempt):
    """One attempt at undoing one committed step."""

    kind: ClassVar[Kind] = Kind.COMPENSATION
    live: ClassVar[frozenset[Status]] = frozenset({Status.COMPENSATING})

    @property
    def policy(self) -> RetryPolicy:
        return self.graph.nodes[self.name].compensation_retry

    def execute(self) -> Outcome:
        # Off the hot path, so always start from the row: it carries the run's error, which
        # the message does not, and says whether this undo is still due.
        if self.redelivered and (outcome := self.before_rerun()) is not None:
            return outcome
        if (outcome := self.refresh()) is not None:
            return outcome
        _, _, seq = self.base.cursor.undo[0]
        self._undo_children()
        # A long undo holds a lease like a long node: the sweep leaves it alone, and a
        # superseded attempt cannot commit.
        with self.runtime.leases.watch(self.key) as lease:
            called = self._call(seq)
        if called is not None:
            return called if isinstance(called, Outcome) else fail(self, called)
        if lease.lost:
            return Outcome.DROPPED
        return self._commit(seq, lease_token=lease.token)

    def _call(self, seq: int) -> Outcome | Failure | None:
        """The compensation, on the state as the step committed it; None when it ran."""
        node = self.graph.nodes[self.name]
        assert node.compensator is not None
        try:
            _, as_committed = self.runtime.store.state_at(self.execution_id, seq)
            model, _ = fit(self.graph, as_committed)
            args = (model, self.context(None)) if node.compensator_wants_context else (model,)
            with time_limit(f"{self.name}.compensation", node.timeout):
                settled(node.compensator(*args))
        except Superseded:
            return Outcome.DROPPED
        except Exception as exc:
            return Failure(exc)
        return None

    def _undo_children(self) -> None:
        """The child sagas this step's visit started are compensated too, newest first (their
        undos run on their own; this one does not wait for them)."""
        prefix = f"{self.execution_id}.{self.name}.{self.visit}."
        children = self.runtime.store.children(self.execution_id, prefix)
        for child in sorted(children, key=lambda c: c.created_at, reverse=True):
            graph = self.runtime.graphs.at(child.graph, child.cursor.graph_version)
            undoable = graph is not None and any(
                node.compensator is not None for node in graph.nodes.values()
            )
            if undoable and child.status in UNDOABLE:
                with contextlib.suppress(InvalidTransition):
                    Operations(self.runtime).compensate(
                        child.id, by="parent", reason=f"parent {self.execution_id} compensates"
                    )

    def is_due(self, base: Base) -> bool:
        undo = compensation.due(base.status, base.cursor)
        return undo is not None and undo[:2] == (self.name, self.visit)

    def replay(self, checkpoint: Checkpoint) -> Outcome:
        base = Base.of(self.runtime.store.get_execution(self.execution_id))
        self.runtime.dispatch_undo(self.graph.name, self.execution_id, base)
        return Outcome.REPLAYED

    def _commit(self, seq: int, lease_token: int = 0) -> Outcome:
        faults.hit(faults.COMPENSATION, self.name)

        def build() -> Commit:
            cursor = self.base.cursor.copy()
            cursor.undo.pop(0)
            return self.commit(
                Kind.COMPENSATION,
                cursor=cursor,
                status=compensation.status_of(cursor),
                meta={"step_seq": seq},
                lease_token=lease_token,
            )

        commit = self.save(build)
        if isinstance(commit, Outcome):
            return commit
        self.runtime.hooks.node_committed(self.graph.name, f"{self.name}.compensate", commit)
        _after(self, commit)
        return Outcome.COMMITTED

    def give_up(self, error: ErrorRecord) -> Outcome:
        """The undo failed for good: wait for an operator, loudly."""
        stuck: ErrorRecord = {**error, "compensating": True, "original": self.base.error}
        commit = self.save(
            lambda: self.commit(
                Kind.INTERVENTION,
                visit=self.base.version + 1,
                status=Status.NEEDS_INTERVENTION,
                meta={"step": self.name},
                error=stuck,
            )
        )
        if isinstance(commit, Outcome):
            return commit
        return needs_intervention(self, stuck, "the compensation of step")
