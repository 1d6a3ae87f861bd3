"""The checkpoint decorator at work: one attempt of one node visit, from message to ack.

The happy path costs one database round trip: run the function on the state the message
carries, commit checkpoint + execution advance (version-checked, unique per visit), publish
what follows. A redelivered message is the one case that reads first, to replay a visit that
already committed instead of running it again.

When exactly one node follows, bound for the same queue, with no Celery time or rate limit
(``timeout=`` is the engine's, per node: tasks/deadline.py), the worker
runs it next in the same task instead of publishing a message for it (up to ``inline_nodes``
in a row): the commit still comes first, and the message stays unacked until the last of
them, so a crash redelivers it and its replay walks the committed visits to what is due.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from celery_durable import faults
from celery_durable.engine import slots, wakeups
from celery_durable.engine.admission import Held, HeldBack
from celery_durable.engine.attempt import Attempt, Outcome, Superseded, Suspend
from celery_durable.engine.base import Base
from celery_durable.engine.compensation_run import after_failure
from celery_durable.engine.context import Context, as_update
from celery_durable.engine.deadline import time_limit
from celery_durable.engine.memo import VisitMemo
from celery_durable.engine.runtime import Publication
from celery_durable.engine.state import apply_update, fit, refuse_unknown, validate
from celery_durable.errors import (
    CircuitOpen,
    InvalidInput,
    MergeConflict,
    NodeTimeout,
    NotJSONSerializable,
    StateSchemaMismatch,
    StateTooLarge,
    UnknownBreaker,
    UnknownStateFields,
)
from celery_durable.faults import SimulatedCrash
from celery_durable.model.cursor import Cursor
from celery_durable.model.records import Checkpoint, Commit, ErrorRecord, Kind, utcnow
from celery_durable.model.wait import Visit
from celery_durable.persistence.slot_table import Holder
from celery_durable.saga import compensation
from celery_durable.saga.coordinator import Handed, advance
from celery_durable.status import LIVE, Status

if TYPE_CHECKING:
    from celery_durable.engine.definition import NodeDefinition as Node

logger = logging.getLogger(__name__)

# Errors no retry can fix: the node's output itself is wrong.
PERMANENT = (
    InvalidInput,
    NotJSONSerializable,
    StateTooLarge,
    MergeConflict,
    UnknownBreaker,
    UnknownStateFields,
    StateSchemaMismatch,
)
# A message stays unacked while the nodes it runs inline run: past this many seconds, hand on
# by message, so that no delivery is held near the broker's ack timeout and other runs queued
# behind it get their turn.
INLINE_SECONDS = 10.0


@dataclass(slots=True)
class NodeRun(Attempt):
    """One attempt of one node visit."""

    kind: ClassVar[Kind] = Kind.NODE
    live: ClassVar[frozenset[Status]] = LIVE

    # How many nodes this message ran before this one, inline; 0 for the message's own visit.
    depth: int = 0
    # When the message's own visit started (time.monotonic()), for the inline time budget.
    since: float = field(default_factory=time.monotonic)
    # The node to run next in the same task, set by a commit that decided to run it inline.
    successor: NodeRun | None = field(default=None, init=False)
    _read_at: int = field(default=-1, init=False)

    @property
    def node(self) -> Node:
        return self.graph.nodes[self.name]

    def execute(self) -> Outcome:
        """Run, commit, dispatch."""
        if self.redelivered and (outcome := self.before_rerun()) is not None:
            return outcome
        if self.base.status != Status.RUNNING and (outcome := self.refresh()) is not None:
            # Sent while paused or compensating: the row has what the message does not
            # carry (the run's error), and says whether this visit is still due.
            return outcome
        self._read_at = self.base.version
        node = self.node
        try:
            place = self._take_place(node)
        except StateSchemaMismatch as exc:
            return self.failed(exc, node.retry, permanent=True)
        if isinstance(place, Outcome):
            return place
        if place is None:
            return self._attempt(node)
        try:
            outcome = self._attempt(node)
        except SimulatedCrash:
            raise  # as a dead worker: the place is freed when its lease runs out
        except BaseException:
            slots.leave(self.runtime, place)
            raise
        slots.leave(self.runtime, place)
        return outcome

    def _attempt(self, node: Node) -> Outcome:
        """Past the concurrency limits: the rate limit, the breaker, the call, the commit."""
        probe = self._admit(node)
        if isinstance(probe, Outcome):
            return probe
        ctx = self.context(VisitMemo(self))
        with self.runtime.leases.watch(self.key) as lease:
            try:
                update = self._call(node, ctx)
            except Superseded:
                return Outcome.DROPPED
            except Suspend:
                return Outcome.WAITING
            except HeldBack as back:
                return self._hold(back.held)
            except Exception as exc:
                permanent = isinstance(exc, PERMANENT)
                if node.breaker is not None and not permanent:
                    self.runtime.flow.report(node.breaker, False, probe)
                return self.failed(_translate(exc, node), node.retry, permanent)
        if node.breaker is not None:
            self.runtime.flow.report(node.breaker, True, probe)
        if lease.lost:
            return Outcome.DROPPED
        return self._commit(update, lease.token)

    def _take_place(self, node: Node) -> Holder | Outcome | None:
        """Concurrency keys: a run's place at its entry node (held to its end), then this
        visit's place (given up when the attempt ends). Without one, the visit waits in line."""
        graph, runtime = self.graph, self.runtime
        run_limit = graph.concurrency if self.name == graph.entry_node and self.visit == 1 else None
        if run_limit is None and node.concurrency is None:
            return None
        model, _ = fit(graph, self.base.state)
        if run_limit is not None:
            key = run_limit.key_of(model)
            run = Holder(slots.graph_scope(graph.name), key, self.execution_id, self.name, 1)
            if not slots.enter(runtime, replace(run, attempt=self.attempt), run_limit, None):
                return self._queued(run)
        if node.concurrency is None:
            return None
        key = node.concurrency.key_of(model)
        scope = slots.node_scope(graph.name, self.name)
        mine = Holder(scope, key, self.execution_id, self.name, self.visit, self.attempt)
        if not slots.enter(runtime, mine, node.concurrency, runtime.settings.lease_ttl):
            return self._queued(mine)
        return mine

    def _queued(self, holder: Holder) -> Outcome:
        self.runtime.hooks.node_held(self.graph.name, self.name, f"slot {holder.key}")
        return Outcome.HELD

    def _admit(self, node: Node) -> bool | Outcome:
        """Flow control before the call: go (True: as the probe of the node's breaker), or
        the outcome of holding the visit back."""
        flow = self.runtime.flow
        if node.rate is not None:
            held = flow.take_turn(node.rate, f"rate {node.rate.name}", self.passed)
            if held is not None:
                return self._hold(held, by_message=True)
        if node.breaker is None:
            return False
        admission = flow.admit(node.breaker)
        if admission.retry_at is None:
            return admission.probe
        if node.when_open == "fail":
            return self.failed(CircuitOpen(node.breaker, admission.retry_at), node.retry)
        return self._hold(Held(admission.retry_at, f"breaker {node.breaker}"))

    def _hold(self, held: Held, by_message: bool = False) -> Outcome:
        """Wait without holding a worker or counting an attempt: in the database, where the
        sweep sends this attempt again at ``held.until``; or, for a rate limit's turn within
        ``eta_threshold``, as a message with a countdown, which keeps the calls evenly spaced
        rather than in bursts at each sweep."""
        runtime = self.runtime
        delay = (held.until - utcnow()).total_seconds()
        if by_message and delay <= runtime.settings.eta_threshold:
            self.redispatch(self.attempt, max(delay, 0.0), passed=held.by)
        else:
            runtime.visits.hold(
                self.execution_id, self.name, self.visit, self.attempt, held.until, held.by
            )
        runtime.hooks.node_held(self.graph.name, self.name, held.by)
        return Outcome.HELD

    def _call(self, node: Node, ctx: Context) -> dict[str, Any]:
        """The user's function on the validated state; its result as a state update."""
        started = time.monotonic()
        model, _ = fit(self.graph, self.base.state)
        if node.timeout is None:
            result = node.fn(model, ctx) if node.wants_context else node.fn(model)
        else:
            drop = functools.partial(self.runtime.visits.drop_lease, *self.key)
            with time_limit(self.name, node.timeout, drop):
                result = node.fn(model, ctx) if node.wants_context else node.fn(model)
        update = as_update(result)
        took = time.monotonic() - started
        if node.timeout is not None and took > node.timeout:
            raise NodeTimeout(self.name, node.timeout)
        slow = self.runtime.settings.slow_node_after
        if took > slow:
            logger.warning(
                "slow node: %s.%s visit %d of %s took %.1fs (slow_node_after is %gs)",
                self.graph.name,
                self.name,
                self.visit,
                self.execution_id,
                took,
                slow,
            )
        return update

    def is_due(self, base: Base) -> bool:
        return base.cursor.holds(self.name, self.visit)

    def replay(self, checkpoint: Checkpoint) -> Outcome:
        """The visit committed before: only dispatch what it made due and is still due."""
        base = Base.of(self.runtime.store.get_execution(self.execution_id))
        if base.status == Status.RUNNING:
            self._dispatch_still_due(checkpoint, base)
        else:
            self.runtime.dispatch_undo(self.graph.name, self.execution_id, base)
        return Outcome.REPLAYED

    def _dispatch_still_due(self, checkpoint: Checkpoint, base: Base) -> None:
        """Dispatch what ``checkpoint`` made ready and the run still holds; follow the visits
        this message ran inline after it, which may have committed before the crash."""
        cp: Checkpoint | None = checkpoint
        while cp is not None:
            handed = Handed.of(cp.meta)
            for name, visit in handed.ready:
                if base.cursor.holds(name, visit):
                    # The copy gets the checks of a redelivered message (redelivery count,
                    # live lease): an inline successor may have died mid-run, or the attempt
                    # this replays be alive and have sent it already (a delivery the
                    # broker's consumer_timeout requeued).
                    self.runtime.dispatcher.dispatch(
                        self.graph.name, name, visit, self.execution_id, base, recovered=True
                    )
            if not handed.inline or base.cursor.holds(*handed.ready[0]):
                return
            cp = self.runtime.store.find(self.execution_id, Kind.NODE, *handed.ready[0])

    # -- commit -----------------------------------------------------------------------------

    def _commit(self, update: dict[str, Any], lease_token: int) -> Outcome:
        handed = Handed([])

        def build() -> Commit | Outcome:
            nonlocal handed
            base = self.base
            if base.version != self._read_at:
                clash = self._clashes(update, self._read_at)
                if clash:
                    return self.failed(MergeConflict(self.name, clash), self.node.retry, True)
                self._read_at = base.version
            try:
                refuse_unknown(self.graph, self.name, update)
                # A stale state is migrated once; without a hook it fit already (_call).
                current = (
                    base.state if self.graph.upgrader is None else fit(self.graph, base.state)[1]
                )
                merged = apply_update(current, update, self.graph.reducers)
                model = validate(self.graph.name, self.graph.state, merged)
                state = model.model_dump(mode="json")
                state_json = self.runtime.state_json(state)
            except PERMANENT as exc:
                return self.failed(exc, self.node.retry, permanent=True)
            cursor, status, handed, error = self._advance(model)
            return self.commit(
                Kind.NODE,
                state=state,
                cursor=cursor,
                status=status,
                output=update,
                meta=handed.meta(),
                error=error,
                lease_token=lease_token,
                state_json=state_json,
            )

        ahead: list[tuple[Commit, list[Publication]]] = []

        def prepare(commit: Commit) -> None:
            """Build the messages this commit hands on while it is in flight; they go out
            once it has answered, and only if it committed."""
            if commit.status == Status.RUNNING and handed.ready and not handed.inline:
                after = Base.after(commit)
                ready = self.runtime.prepare_all(
                    self.graph.name, self.execution_id, after, handed.ready
                )
                ahead[:] = [(commit, ready)]

        faults.hit(faults.BEFORE_COMMIT, self.name)
        commit = self.save(build, prepare)
        if isinstance(commit, Outcome):
            return commit
        faults.hit(faults.AFTER_COMMIT, self.name)
        built = [ready for made, ready in ahead if made is commit]
        self._proceed(commit, handed, built[0] if built else None)
        return Outcome.COMMITTED

    def _advance(self, model: BaseModel) -> tuple[Cursor, Status, Handed, ErrorRecord | None]:
        """Where this commit moves the run, and what it hands on."""
        base = self.base
        if base.status == Status.COMPENSATING:
            # The saga is being undone: record this step so that it is undone too.
            cursor = compensation.completed_while_compensating(
                base.cursor, self.name, self.visit, base.version + 1
            )
            return cursor, Status.COMPENSATING, Handed([]), base.error
        step = advance(self.graph, base.cursor, self.name, self.visit, model)
        status = step.status
        if base.status == Status.PAUSED and status in (Status.RUNNING, Status.WAITING):
            # Paused: what this node made ready waits for resume().
            status = Status.PAUSED
            step.cursor.held.extend(step.ready)
        inline = status == Status.RUNNING and self._may_inline(step.ready)
        return step.cursor, status, Handed(step.ready, inline), step.error

    def _proceed(
        self, commit: Commit, handed: Handed, built: list[Publication] | None = None
    ) -> None:
        """After the commit: hand on what it made ready (``built``: its messages, made
        during the commit), or report the end."""
        runtime = self.runtime
        runtime.hooks.node_committed(self.graph.name, self.name, commit)
        after = Base.after(commit)
        if commit.status == Status.RUNNING and handed.inline:
            ((name, visit),) = handed.ready
            self.successor = NodeRun(
                runtime,
                self.graph,
                name,
                self.execution_id,
                visit,
                after,
                depth=self.depth + 1,
                since=self.since,
            )
        elif commit.status == Status.RUNNING and built is not None:
            for publication in built:
                publication.send()
        elif commit.status == Status.RUNNING:
            runtime.dispatch_all(self.graph.name, self.execution_id, after, handed.ready)
        elif commit.status == Status.COMPENSATING:
            runtime.dispatch_undo(self.graph.name, self.execution_id, after)
        elif commit.status.finished:
            parent = after.cursor.parent
            wakeups.finished(runtime, self.execution_id, self.graph.name, commit.status, parent)

    def _may_inline(self, ready: list[Visit]) -> bool:
        """Run the one node that follows in this task rather than publish it, where the
        dispatcher allows it, within ``inline_nodes`` and INLINE_SECONDS."""
        return (
            len(ready) == 1
            and self.depth < self.runtime.settings.inline_nodes
            and time.monotonic() - self.since < INLINE_SECONDS
            and self.runtime.dispatcher.may_inline(
                self.graph.name, self.name, ready[0][0], self.base.cursor.queue
            )
        )

    def _clashes(self, update: dict[str, Any], since: int) -> list[str]:
        """Fields this update shares with node commits made since our state was read."""
        mine = set(update) - set(self.graph.reducers)
        if not mine:
            return []
        theirs: set[str] = set()
        for cp in self.runtime.store.list(self.execution_id, kinds=[Kind.NODE], after=since):
            if isinstance(cp.output, dict):
                theirs.update(cp.output)
        return sorted(mine & theirs)

    # -- failure ----------------------------------------------------------------------------

    def give_up(self, error: ErrorRecord) -> Outcome:
        """Attempts exhausted: fail the run, stop it for an operator (``intervene``, or a state
        a deploy left behind: no undo runs on it either), or for a saga start compensating."""
        mismatch = error["type"] == StateSchemaMismatch.__name__
        if self.graph.on_failure == "compensate" and not mismatch:
            return after_failure(self, error)
        intervene = self.graph.on_failure == "intervene" or mismatch
        status = Status.NEEDS_INTERVENTION if intervene else Status.FAILED
        # The failed node stays due, so that retry() can run it again.
        commit = self.save(lambda: self.commit(Kind.FAILURE, status=status, error=error))
        if isinstance(commit, Outcome):
            return commit
        if intervene:
            return self._intervention(error)
        logger.error(
            "execution %s failed at %s.%s: %s",
            self.execution_id,
            self.graph.name,
            self.name,
            error["message"],
        )
        parent = self.base.cursor.parent
        wakeups.finished(self.runtime, self.execution_id, self.graph.name, Status.FAILED, parent)
        return Outcome.FAILED

    def _intervention(self, error: ErrorRecord) -> Outcome:
        logger.error(
            "execution %s needs intervention at %s.%s: %s. Fix the cause, then "
            "Execution.retry(), or Execution.skip(%r).",
            self.execution_id,
            self.graph.name,
            self.name,
            error["message"],
            self.name,
        )
        self.runtime.announcer.announce_intervention(
            self.execution_id, self.graph.name, self.name, error
        )
        return Outcome.NEEDS_INTERVENTION


def _translate(exc: Exception, node: Node) -> Exception:
    if type(exc).__name__ == "SoftTimeLimitExceeded" and node.timeout is not None:
        return NodeTimeout(node.name, node.timeout)
    return exc
