"""The checkpoint decorator at work: one attempt of one node visit, from message to ack.

The happy path costs one database round trip: run the function on the state the message
carries, commit checkpoint + execution advance (version-checked, unique per visit), publish
what follows. A redelivered message is the one case that reads first, to replay a visit that
already committed instead of running it again.

When exactly one node follows, bound for the same queue, with no time or rate limit, the worker
runs it next in the same task instead of publishing a message for it (up to ``inline_nodes``
in a row): the commit still comes first, and the message stays unacked until the last of
them, so a crash redelivers it and its replay walks the committed visits to what is due.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from celery_durable import faults
from celery_durable.errors import (
    InvalidInput,
    MergeConflict,
    NodeTimeout,
    NotJSONSerializable,
    StateTooLarge,
    VersionConflict,
)
from celery_durable.persistence.records import Checkpoint, Commit
from celery_durable.saga import compensation
from celery_durable.saga.coordinator import Cursor, advance
from celery_durable.status import Status
from celery_durable.tasks.attempt import MAX_COMMIT_TRIES, Attempt, Base, Superseded, worker_id
from celery_durable.tasks.context import Context, json_roundtrip
from celery_durable.tasks.state import apply_update, validate

if TYPE_CHECKING:
    from celery_durable.tasks.graph import Node

logger = logging.getLogger(__name__)

NODE = "node"
STEP = "step"
FAILURE = "failure"
# Errors no retry can fix: the node's output itself is wrong.
PERMANENT = (InvalidInput, NotJSONSerializable, StateTooLarge, MergeConflict)
# A message stays unacked while the nodes it runs inline run: past this many seconds, hand on
# by message, so that no delivery is held near the broker's ack timeout and other runs queued
# behind it get their turn.
INLINE_SECONDS = 10.0


@dataclass(slots=True)
class NodeRun(Attempt):
    """One attempt of one node visit."""

    kind: ClassVar[str] = NODE
    live: ClassVar[frozenset[Status]] = frozenset(
        {Status.RUNNING, Status.PAUSED, Status.COMPENSATING}
    )

    # How many nodes this message ran before this one, inline; 0 for the message's own visit.
    depth: int = 0
    # When the message's own visit started (time.monotonic()), for the inline time budget.
    since: float = field(default_factory=time.monotonic)
    # The node to run next in the same task, set by a commit that decided to run it inline.
    successor: NodeRun | None = field(default=None, init=False)
    _steps: dict[str, Checkpoint] | None = field(default=None, init=False)
    _read_at: int = field(default=-1, init=False)

    @property
    def node(self) -> Node[..., Any]:
        return self.graph.nodes[self.name]

    def execute(self) -> str:
        """Run, commit, dispatch; returns what happened (for logs and tests)."""
        if self.redelivered and (outcome := self.before_rerun()) is not None:
            return outcome
        if self.base.status != Status.RUNNING and (outcome := self.refresh()) is not None:
            # Sent while paused or compensating: the row has what the message does not
            # carry (the run's error), and says whether this visit is still due.
            return outcome
        self._read_at = self.base.version
        node = self.node
        ctx = Context(
            self,
            execution_id=self.execution_id,
            node=self.name,
            visit=self.visit,
            attempt=self.attempt,
            idempotency_key=f"{self.execution_id}:{self.name}:{self.visit}",
        )
        started = time.monotonic()
        with self.durable.leases.watch(self.key) as lease:
            try:
                model = validate(self.graph.name, self.graph.state, self.base.state)
                result = node.fn(model, ctx) if node.wants_context else node.fn(model)
                update = _as_update(result)
                took = time.monotonic() - started
                if node.timeout is not None and took > node.timeout:
                    raise NodeTimeout(self.name, node.timeout)
                if took > self.durable.settings.slow_node_after:
                    logger.warning(
                        "slow node: %s.%s visit %d of %s took %.1fs (slow_node_after is %gs)",
                        self.graph.name,
                        self.name,
                        self.visit,
                        self.execution_id,
                        took,
                        self.durable.settings.slow_node_after,
                    )
            except Superseded:
                return "dropped"
            except Exception as exc:
                return self.failed(_translate(exc, node), node.retry, isinstance(exc, PERMANENT))
        if lease.lost:
            return "dropped"
        return self._commit(update, lease.token)

    def is_due(self, base: Base) -> bool:
        return base.cursor.holds(self.name, self.visit)

    def replay(self, checkpoint: Checkpoint) -> str:
        """The visit committed before: only dispatch what it made due and is still due."""
        record = self.durable.store.get_execution(self.execution_id)
        base = Base.of(record)
        if record.status == Status.RUNNING:
            self._dispatch_still_due(checkpoint, base)
        elif record.status == Status.COMPENSATING:
            compensation.proceed(self.durable, self.graph, self.execution_id, base)
        return "replayed"

    def _dispatch_still_due(self, checkpoint: Checkpoint, base: Base) -> None:
        """Dispatch what ``checkpoint`` made ready and the run still holds; follow the visits
        this message ran inline after it, which may have committed before the crash."""
        cp: Checkpoint | None = checkpoint
        while cp is not None:
            meta = cp.meta or {}
            inline = bool(meta.get("inline"))
            ready = [(name, visit) for name, visit in meta.get("next", [])]
            for name, visit in ready:
                if base.cursor.holds(name, visit):
                    # An inline successor may have died mid-run: its copy gets the checks
                    # of a redelivered message (redelivery count, live lease).
                    self.durable.dispatch(
                        self.graph, name, visit, self.execution_id, base, recovered=inline
                    )
            if not inline or base.cursor.holds(*ready[0]):
                return
            cp = self.durable.store.find(self.execution_id, NODE, *ready[0])

    # -- commit -----------------------------------------------------------------------------

    def _commit(self, update: dict[str, Any], lease_token: int) -> str:
        ready: list[tuple[str, int]] = []
        inline = False

        def build() -> Commit | str:
            nonlocal ready, inline
            base = self.base
            if base.version != self._read_at:
                clash = self._clashes(update, self._read_at)
                if clash:
                    return self.failed(MergeConflict(self.name, clash), self.node.retry, True)
                self._read_at = base.version
            try:
                merged = apply_update(base.state, update, self.graph.reducers)
                model = validate(self.graph.name, self.graph.state, merged)
                state = model.model_dump(mode="json")
                state_json = self.durable.state_json(state)
            except PERMANENT as exc:
                return self.failed(exc, self.node.retry, permanent=True)
            if base.status == Status.COMPENSATING:
                # The saga is being undone: record this step so that it is undone too.
                cursor = compensation.completed_while_compensating(
                    base.cursor, self.name, self.visit, base.version + 1
                )
                status, ready, error = Status.COMPENSATING, [], base.error
            else:
                step = advance(self.graph, base.cursor, self.name, self.visit, model)
                cursor, ready, error = step.cursor, step.ready, step.error
                status = step.status
                if base.status == Status.PAUSED and status == Status.RUNNING:
                    # Paused: what this node made ready waits for resume().
                    status = Status.PAUSED
                    cursor.held.extend(ready)
            inline = status == Status.RUNNING and self._may_inline(ready)
            meta: dict[str, Any] = {"next": ready, "attempt": self.attempt, "worker": worker_id()}
            if inline:
                meta["inline"] = True
            return Commit(
                execution_id=self.execution_id,
                expected_version=base.version,
                kind=NODE,
                node=self.name,
                visit=self.visit,
                state=state,
                cursor=cursor.to_json(),
                status=status,
                output=update,
                meta=meta,
                error=error,
                lease_token=lease_token,
                state_json=state_json,
            )

        commit = self.save(build)
        if isinstance(commit, str):
            return commit
        faults.hit(faults.AFTER_COMMIT, self.name)
        self._proceed(commit, ready, inline)
        return "committed"

    def _proceed(self, commit: Commit, ready: list[tuple[str, int]], inline: bool) -> None:
        """After the commit: hand on what it made ready, or report the end."""
        hooks = self.durable.hooks
        hooks.node_committed(self.graph.name, self.name, commit)
        after = Base(
            commit.seq, commit.state, Cursor.from_json(commit.cursor), commit.status, commit.error
        )
        if commit.status == Status.RUNNING and inline:
            ((name, visit),) = ready
            self.successor = NodeRun(
                self.durable,
                self.graph,
                name,
                self.execution_id,
                visit,
                after,
                depth=self.depth + 1,
                since=self.since,
            )
        elif commit.status == Status.RUNNING:
            for name, visit in ready:
                self.durable.dispatch(self.graph, name, visit, self.execution_id, after)
        elif commit.status == Status.COMPENSATING:
            compensation.proceed(self.durable, self.graph, self.execution_id, after)
        elif commit.status.finished:
            hooks.execution_finished(self.execution_id, self.graph.name, commit.status)

    def _may_inline(self, ready: list[tuple[str, int]]) -> bool:
        """Run the one node that follows in this task rather than publish it: only when its
        message would go where this one's went (node queues, the run's queue, the app's
        task_routes) and no time or rate limit applies to either task (a task's time limit
        is its first node's), within ``inline_nodes`` and INLINE_SECONDS."""
        if len(ready) != 1 or self.depth >= self.durable.settings.inline_nodes:
            return False
        here, there = self.node, self.graph.nodes[ready[0][0]]
        run_queue = self.base.cursor.queue
        return (
            self.durable.unlimited(here)
            and self.durable.unlimited(there)
            and time.monotonic() - self.since < INLINE_SECONDS
            and self.durable.destination(here, run_queue)
            == self.durable.destination(there, run_queue)
        )

    def _clashes(self, update: dict[str, Any], since: int) -> list[str]:
        """Fields this update shares with node commits made since our state was read."""
        mine = set(update) - set(self.graph.reducers)
        if not mine:
            return []
        theirs: set[str] = set()
        for cp in self.durable.store.list(self.execution_id, kinds=[NODE], after=since):
            if isinstance(cp.output, dict):
                theirs.update(cp.output)
        return sorted(mine & theirs)

    # -- failure ----------------------------------------------------------------------------

    def give_up(self, error: dict[str, Any]) -> str:
        """Attempts exhausted: fail the run, or for a saga start compensating."""
        if self.graph.on_failure == "compensate":
            return compensation.after_failure(self, error)

        def build() -> Commit:
            return Commit(
                execution_id=self.execution_id,
                expected_version=self.base.version,
                kind=FAILURE,
                node=self.name,
                visit=self.visit,
                state=self.base.state,
                # The failed node stays due, so that retry() can run it again.
                cursor=self.base.cursor.to_json(),
                status=Status.FAILED,
                meta={"attempt": self.attempt, "worker": worker_id()},
                error=error,
            )

        commit = self.save(build)
        if isinstance(commit, str):
            return commit
        compensation.logger.error(
            "execution %s failed at %s.%s: %s",
            self.execution_id,
            self.graph.name,
            self.name,
            error["message"],
        )
        self.durable.hooks.execution_finished(self.execution_id, self.graph.name, Status.FAILED)
        return "failed"

    # -- sub-steps --------------------------------------------------------------------------

    def step(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        step_node = f"{self.name}/{name}"
        if self._steps is None:
            done = self.durable.store.list(self.execution_id, kinds=[STEP])
            prefix = f"{self.name}/"
            self._steps = {
                cp.node: cp for cp in done if cp.visit == self.visit and cp.node.startswith(prefix)
            }
        if step_node in self._steps:
            return self._steps[step_node].output
        result = json_roundtrip(fn(*args))
        for _ in range(MAX_COMMIT_TRIES):
            commit = Commit(
                execution_id=self.execution_id,
                expected_version=self.base.version,
                kind=STEP,
                node=step_node,
                visit=self.visit,
                state=self.base.state,
                cursor=self.base.cursor.to_json(),
                status=self.base.status,
                output=result,
                error=self.base.error,
            )
            try:
                self._steps[step_node] = self.durable.store.save(commit)
            except VersionConflict:
                # A sibling branch or an operator moved the run on; steps change no state,
                # so rebase and write again (the final commit merges with what changed).
                if (reason := self.refresh()) is not None:
                    raise Superseded(reason) from None
                continue
            self.base.version = commit.seq
            return result
        raise VersionConflict(self.execution_id, self.base.version)


def _as_update(result: Any) -> dict[str, Any]:
    if result is None:
        return {}
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json", exclude_unset=True)
    if isinstance(result, dict):
        return json_roundtrip(result)
    raise NotJSONSerializable(
        "A node's return value",
        f"expected a dict of state fields or None, got {type(result).__name__}",
    )


def _translate(exc: Exception, node: Node[..., Any]) -> Exception:
    if type(exc).__name__ == "SoftTimeLimitExceeded" and node.timeout is not None:
        return NodeTimeout(node.name, node.timeout)
    return exc
