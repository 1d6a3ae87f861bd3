"""What a node visit remembers across its re-runs: sub-steps and waits, each a checkpoint.

A node runs again after a retry, a crash, or a wait that ended; code outside ``ctx.step`` runs
again, and each step and wait, asked for in the same order, returns what it recorded. A wait
that has not ended commits a ``wait`` checkpoint (the run is ``waiting`` if nothing else is in
flight) and ends the attempt: the message is acked and no worker holds it. What wakes it
(``engine.waits``) dispatches the visit again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from celery_durable import tracing
from celery_durable.coroutines import settled
from celery_durable.engine import wakeups
from celery_durable.engine.attempt import Attempt, Superseded, Suspend
from celery_durable.engine.base import Base
from celery_durable.engine.context import json_roundtrip
from celery_durable.engine.rebase import until_committed
from celery_durable.engine.start import StartOptions, start_run
from celery_durable.errors import VersionConflict
from celery_durable.model.records import Checkpoint, Commit, ExecutionRecord, Kind
from celery_durable.model.wait import Wait, WaitKind
from celery_durable.policies.retry import NonRetryable
from celery_durable.saga.shape import GraphShape
from celery_durable.status import Status


class VisitMemo:
    """The steps and waits one node visit recorded, read once per attempt."""

    def __init__(self, run: Attempt) -> None:
        self.run = run
        self._slots = 0
        self._children = 0
        self._recorded: dict[tuple[Kind, str], Checkpoint] | None = None

    @property
    def recorded(self) -> dict[tuple[Kind, str], Checkpoint]:
        """Read on the first step or wait: a node that has neither reads nothing."""
        if self._recorded is None:
            run, prefixes = self.run, (f"{self.run.name}/", f"{self.run.name}@")
            self._recorded = {
                (cp.kind, cp.node): cp
                for cp in run.runtime.store.list(
                    run.execution_id, kinds=[Kind.STEP, Kind.WAIT, Kind.WAKE], visit=run.visit
                )
                if cp.node.startswith(prefixes)
            }
        return self._recorded

    def step(
        self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], breaker: str | None = None
    ) -> Any:
        """Run ``fn`` once per visit, its result a checkpoint of its own."""
        node = f"{self.run.name}/{name}"
        if (done := self.recorded.get((Kind.STEP, node))) is not None:
            return done.output
        flow = self.run.runtime.flow
        result = json_roundtrip(
            settled(fn(*args)) if breaker is None else flow.call(breaker, fn, args)
        )
        self._commit(lambda: self.run.commit(Kind.STEP, node=node, output=result))
        return result

    def wait(
        self,
        kind: WaitKind,
        *,
        seconds: float | None = None,
        event: str | None = None,
        child: str | None = None,
    ) -> dict[str, Any]:
        """What ended the visit's next wait; suspends the attempt if it has not ended."""
        until = None if seconds is None else time.time() + seconds
        return self._wait(
            Wait(kind, self.run.name, self.run.visit, self._slot(), until, event, child)
        )

    def start_child(
        self,
        graph: GraphShape,
        input: dict[str, Any],
        key: str | None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Start a run of ``graph`` whose id says whose child it is: the parent's id, node, visit
        and ``key`` (else its place among this visit's children), so a re-run finds it started.
        ``tags`` None: the parent's, copied by the store."""
        if key is None:
            key = f"c{self._children}"
            self._children += 1
        child = f"{self.run.execution_id}.{self.run.name}.{self.run.visit}.{key}"
        self._start(graph, input, child, tags)
        return child

    def map(
        self,
        graph: GraphShape,
        inputs: list[dict[str, Any]],
        tags: Mapping[str, str] | None = None,
    ) -> list[ExecutionRecord]:
        """One child per input, started once, waited for together; their runs in input order."""
        run = self.run
        slot = self._slot()
        prefix = f"{run.execution_id}.{run.name}.{run.visit}.m{slot}."
        wait = Wait("children", run.name, run.visit, slot, child=prefix, count=len(inputs))
        if not any((k, wait.checkpoint_node) in self.recorded for k in (Kind.WAIT, Kind.WAKE)):
            for i, values in enumerate(inputs):
                self._start(graph, values, f"{prefix}{i:06d}", tags)
        self._wait(wait)
        return run.runtime.store.children(run.execution_id, prefix)

    def _slot(self) -> str:
        if self.run.base.status == Status.COMPENSATING:
            raise NonRetryable(f"node {self.run.name!r} cannot wait while its saga compensates")
        self._slots += 1
        return str(self._slots - 1)

    def _start(
        self, graph: GraphShape, input: dict[str, Any], child: str, tags: Mapping[str, str] | None
    ) -> None:
        run = self.run
        options = StartOptions(
            child, queue=run.base.cursor.queue, parent=run.execution_id, tags=tags
        )
        start_run(run.runtime, run.runtime.graph(graph.name), input, options)

    def _wait(self, wait: Wait) -> dict[str, Any]:
        run = self.run
        if (woke := self.recorded.get((Kind.WAKE, wait.checkpoint_node))) is not None:
            self._timed(wait, woke)
            return dict(woke.output)
        started = self.recorded.get((Kind.WAIT, wait.checkpoint_node))
        if started is not None:
            wait = Wait.from_json(started.output)
        if (now := self._ended(wait)) is not None:
            self._commit(lambda: run.commit(Kind.WAKE, node=wait.checkpoint_node, output=now))
            return now
        if started is None:
            self._begin(wait)
        raise Suspend(wait.key)

    def _timed(self, wait: Wait, woke: Checkpoint) -> None:
        """Report the wake-up lag, the first time the node runs after a timer woke it."""
        due = woke.output.get("due") if isinstance(woke.output, dict) else None
        if due is not None and woke.seq == self.run.base.version:
            lag = time.time() - due
            self.run.runtime.hooks.woke(self.run.graph.name, self.run.name, wait.kind, lag)

    def _ended(self, wait: Wait) -> dict[str, Any] | None:
        """Whether the wait is over already: a sleep past its end, an event already sent."""
        if wait.kind == "sleep" and wait.until is not None and wait.until <= time.time():
            return {"due": wait.until, "timeout": False}
        if wait.kind == "event":
            assert wait.event is not None
            found = wakeups.next_event(self.run.runtime, self.run.execution_id, wait.event)
            if found is not None:
                return {"event": found.id, "payload": found.payload}
        if wait.kind in ("child", "children"):
            return wakeups.child_result(self.run.runtime, self.run.execution_id, wait)
        return None

    def _begin(self, wait: Wait) -> None:
        """Commit the wait; its timer row goes first, so no committed wait lacks one."""
        run = self.run
        due = wakeups.due_at(run.runtime, wait)
        if due is not None:
            run.runtime.visits.schedule(
                run.execution_id, Kind.WAIT, wait.checkpoint_node, run.visit, due
            )

        def build() -> Commit:
            cursor = run.base.cursor.copy()
            cursor.wait(wait)
            paused = run.base.status == Status.PAUSED
            status = Status.PAUSED if paused else cursor.settled()
            return run.commit(
                Kind.WAIT,
                node=wait.checkpoint_node,
                cursor=cursor,
                status=status,
                output=wait.to_json(),
            )

        self._commit(build)
        tracing.event(
            run.base.cursor.trace,
            f"durable.wait {wait.kind}",
            {
                "execution_id": run.execution_id,
                "node": run.name,
                "visit": run.visit,
                "wait": wait.key,
            },
        )
        # What ended while this wait was being committed found no wait to wake: look again.
        if wait.kind == "event":
            wakeups.wake_event_waits(run.runtime, run.execution_id)
        elif wait.kind in ("child", "children"):
            wakeups.wake(
                run.runtime, run.execution_id, wait.key, wakeups.children_result(run.runtime)
            )

    def _commit(self, build: Callable[[], Commit]) -> Checkpoint:
        """A commit in the middle of the node: rebase on whatever moved the run meanwhile
        (a sibling branch, an operator) and build it again."""
        run = self.run

        def once(conflict: VersionConflict | None) -> Checkpoint:
            if (reason := run.rebase(conflict)) is not None:
                raise Superseded(reason)
            commit = build()
            checkpoint = run.runtime.store.save(commit)
            run.base = Base.after(commit)
            self.recorded[(commit.kind, commit.node)] = checkpoint
            return checkpoint

        return until_committed(run.execution_id, once)
