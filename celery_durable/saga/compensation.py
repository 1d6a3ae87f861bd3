"""Compensation: undo a saga's committed steps, newest first, one at a time, each a Celery
task whose commit is a checkpoint, so a crash resumes at the next step still to undo and
never undoes one twice.

A compensation that fails for good stops the run in ``needs_intervention`` (an ERROR log
line, the ``intervention_required`` signal, a hook) until an operator retries or skips it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from celery_durable.persistence.records import Checkpoint, Commit
from celery_durable.saga.coordinator import Cursor
from celery_durable.signals import intervention_required
from celery_durable.status import Status
from celery_durable.tasks.attempt import Attempt, Base, Superseded, worker_id
from celery_durable.tasks.context import Context
from celery_durable.tasks.state import validate

if TYPE_CHECKING:
    from celery_durable.durable import Durable
    from celery_durable.tasks.graph import Graph
    from celery_durable.tasks.node import NodeRun

logger = logging.getLogger("celery_durable.saga")

COMPENSATION = "compensation"
INTERVENTION = "intervention"


def plan(durable: Durable, graph: Graph, execution_id: str) -> list[tuple[str, int, int]]:
    """Committed steps that have a compensation and were not undone yet, newest first."""
    history = durable.store.list(execution_id, kinds=["node", COMPENSATION])
    undone = {(cp.node, cp.visit) for cp in history if cp.kind == COMPENSATION}
    return [
        (cp.node, cp.visit, cp.seq)
        for cp in reversed(history)
        if cp.kind == "node"
        and (cp.node, cp.visit) not in undone
        and cp.node in graph.nodes
        and graph.nodes[cp.node].compensator is not None
    ]


def completed_while_compensating(cursor: Cursor, node: str, visit: int, seq: int) -> Cursor:
    """A step that was in flight when compensation began committed: undo it first."""
    nxt = cursor.copy()
    nxt.frontier.remove((node, visit))
    nxt.undo.insert(0, (node, visit, seq))
    return nxt


def status_of(cursor: Cursor) -> Status:
    """Compensating while anything is in flight or left to undo; compensated after that."""
    return Status.COMPENSATING if cursor.frontier or cursor.undo else Status.COMPENSATED


def proceed(
    durable: Durable, graph: Graph, execution_id: str, base: Base, recovered: bool = False
) -> None:
    """Dispatch the next compensation, once no step is in flight any more."""
    if base.status != Status.COMPENSATING or base.cursor.frontier or not base.cursor.undo:
        return
    node, visit, _ = base.cursor.undo[0]
    durable.dispatch(graph, node, visit, execution_id, base, compensation=True, recovered=recovered)


def after_failure(run: NodeRun, error: dict[str, Any]) -> str:
    """A saga step failed for good: keep the error, start undoing what committed."""

    def build() -> Commit:
        base = run.base
        cursor = base.cursor.copy()
        if (run.name, run.visit) in cursor.frontier:
            cursor.frontier.remove((run.name, run.visit))
        if base.status != Status.COMPENSATING:
            cursor.undo = plan(run.durable, run.graph, run.execution_id)
        return Commit(
            execution_id=run.execution_id,
            expected_version=base.version,
            kind="failure",
            node=run.name,
            visit=run.visit,
            state=base.state,
            cursor=cursor.to_json(),
            status=status_of(cursor),
            meta={"attempt": run.attempt, "worker": worker_id()},
            # A compensation requested earlier keeps its reason as the run's error.
            error=base.error if base.status == Status.COMPENSATING else error,
        )

    commit = run.save(build)
    if isinstance(commit, str):
        return commit
    logger.warning(
        "saga %s %s: step %s failed (%s); compensating",
        run.graph.name,
        run.execution_id,
        run.name,
        error["message"],
    )
    _after(run.durable, run.graph, run.execution_id, commit)
    return "failed"


def _after(durable: Durable, graph: Graph, execution_id: str, commit: Commit) -> None:
    base = Base(
        commit.seq, commit.state, Cursor.from_json(commit.cursor), commit.status, commit.error
    )
    if commit.status == Status.COMPENSATED:
        durable.hooks.execution_finished(execution_id, graph.name, Status.COMPENSATED)
    else:
        proceed(durable, graph, execution_id, base)


@dataclass(slots=True)
class CompensationRun(Attempt):
    """One attempt at undoing one committed step."""

    kind: ClassVar[str] = COMPENSATION
    live: ClassVar[frozenset[Status]] = frozenset({Status.COMPENSATING})

    def execute(self) -> str:
        # Off the hot path, so always start from the row: it carries the run's error, which
        # the message does not, and says whether this undo is still due.
        if self.redelivered and (outcome := self.before_rerun()) is not None:
            return outcome
        if (outcome := self.refresh()) is not None:
            return outcome
        node = self.graph.nodes[self.name]
        assert node.compensator is not None
        _, _, seq = self.base.cursor.undo[0]
        ctx = Context(
            None,
            execution_id=self.execution_id,
            node=self.name,
            visit=self.visit,
            attempt=self.attempt,
            idempotency_key=f"{self.execution_id}:{self.name}:{self.visit}:compensate",
        )
        # A long undo holds a lease like a long node: the sweep leaves it alone, and a
        # superseded attempt cannot commit.
        with self.durable.leases.watch(self.key) as lease:
            try:
                as_committed = self.durable.store.load(self.execution_id, seq).state
                model = validate(self.graph.name, self.graph.state, as_committed)
                if node.compensator_wants_context:
                    node.compensator(model, ctx)
                else:
                    node.compensator(model)
            except Superseded:
                return "dropped"
            except Exception as exc:
                return self.failed(exc, node.compensation_retry)
        if lease.lost:
            return "dropped"
        return self._commit(seq, lease_token=lease.token)

    def is_due(self, base: Base) -> bool:
        undo = base.cursor.undo
        return not base.cursor.frontier and bool(undo) and undo[0][:2] == (self.name, self.visit)

    def replay(self, checkpoint: Checkpoint) -> str:
        record = self.durable.store.get_execution(self.execution_id)
        proceed(self.durable, self.graph, self.execution_id, Base.of(record))
        return "replayed"

    def _commit(self, seq: int, lease_token: int = 0) -> str:
        def build() -> Commit:
            cursor = self.base.cursor.copy()
            cursor.undo.pop(0)
            return Commit(
                execution_id=self.execution_id,
                expected_version=self.base.version,
                kind=COMPENSATION,
                node=self.name,
                visit=self.visit,
                state=self.base.state,
                cursor=cursor.to_json(),
                status=status_of(cursor),
                output=None,
                meta={"step_seq": seq, "attempt": self.attempt, "worker": worker_id()},
                error=self.base.error,
                lease_token=lease_token,
            )

        commit = self.save(build)
        if isinstance(commit, str):
            return commit
        self.durable.hooks.node_committed(self.graph.name, f"{self.name}.compensate", commit)
        _after(self.durable, self.graph, self.execution_id, commit)
        return "committed"

    def give_up(self, error: dict[str, Any]) -> str:
        """The undo failed for good: wait for an operator, loudly."""
        stuck = {**error, "compensating": True, "original": self.base.error}

        def build() -> Commit:
            return Commit(
                execution_id=self.execution_id,
                expected_version=self.base.version,
                kind=INTERVENTION,
                node=self.name,
                visit=self.base.version + 1,
                state=self.base.state,
                cursor=self.base.cursor.to_json(),
                status=Status.NEEDS_INTERVENTION,
                meta={"attempt": self.attempt, "worker": worker_id(), "step": self.name},
                error=stuck,
            )

        commit = self.save(build)
        if isinstance(commit, str):
            return commit
        logger.error(
            "saga %s %s needs intervention: compensation of step %s failed for good: %s. "
            "Fix the cause, then Execution.retry(), or Execution.skip(%r) to mark it done.",
            self.graph.name,
            self.execution_id,
            self.name,
            error["message"],
            self.name,
        )
        intervention_required.send(
            sender=self.durable, execution_id=self.execution_id, step=self.name, error=stuck
        )
        self.durable.hooks.intervention_required(self.execution_id, self.graph.name, self.name)
        return "needs_intervention"
