"""The checkpoint decorator at work: one attempt of one node visit, from message to ack.

It reads as its protocol: replay → admit → call → commit → hand on. Each stage returns a
value the next one takes, or the outcome that ends the attempt, or a ``Failure`` for the
failure stage (engine/failure.py), which runs after the stages, never inside a commit.

The happy path costs one database round trip: run the function on the state the message
carries, commit checkpoint + execution advance (version-checked, unique per visit), publish
what follows, its messages built while the commit is in flight. A redelivered message is the
one case that reads first, to replay a visit that already committed instead of running it
again.

When exactly one node follows, bound for the same queue, with no Celery time or rate limit
(``timeout=`` is the engine's, per node: engine/deadline.py), the worker runs it next in the
same task instead of publishing a message for it (up to ``inline_nodes`` in a row): the commit
still comes first, and the message stays unacked until the last of them, so a crash
redelivers it and its replay walks the committed visits to what is due.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from celery_durable import faults
from celery_durable.coroutines import settled
from celery_durable.engine import compaction, wakeups
from celery_durable.engine.admission import Admitted, Gate, Hold
from celery_durable.engine.attempt import Attempt, Outcome, Superseded, Suspend
from celery_durable.engine.base import Base
from celery_durable.engine.compensation_run import start_compensating
from celery_durable.engine.context import Context, as_update
from celery_durable.engine.deadline import time_limit
from celery_durable.engine.failure import Failure, fail, needs_intervention
from celery_durable.engine.flow_control import HeldBack, Turn
from celery_durable.engine.memo import VisitMemo
from celery_durable.engine.node_commit import PERMANENT, Draft, draft
from celery_durable.engine.rebase import until_committed
from celery_durable.engine.runtime import Publication
from celery_durable.engine.state import fit
from celery_durable.errors import NodeTimeout, StateSchemaMismatch, VersionConflict
from celery_durable.model.records import Checkpoint, ErrorRecord, Kind
from celery_durable.model.wait import Visit
from celery_durable.policies.retry import RetryPolicy
from celery_durable.saga.coordinator import Handed
from celery_durable.status import LIVE, Status

if TYPE_CHECKING:
    from celery_durable.engine.definition import NodeDefinition

logger = logging.getLogger(__name__)

# A message stays unacked while the nodes it runs inline run: past this many seconds, hand on
# by message, so that no delivery is held near the broker's ack timeout and other runs queued
# behind it get their turn.
INLINE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Landed:
    """A node commit that landed, and the messages built for it while it was in flight."""

    draft: Draft
    messages: list[Publication]


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
    # The version of the state the function ran on, and that state: commits since then may
    # clash with it.
    read_at: int = field(default=-1, init=False)
    read_state: dict[str, Any] = field(default_factory=dict, init=False)
    # The version the message carried: what this task commits after it stays until its ack.
    unacked: int = -1

    @property
    def node(self) -> NodeDefinition:
        return self.graph.nodes[self.name]

    @property
    def policy(self) -> RetryPolicy:
        return self.node.retry

    def execute(self) -> Outcome:
        """replay → admit → call → commit → hand on."""
        if (stop := self.catch_up()) is not None:
            return stop
        gate = Gate(self.runtime)
        admitted = gate.admit(self)
        if isinstance(admitted, Failure):
            return fail(self, admitted)
        if not isinstance(admitted, Admitted):
            return gate.wait(self, admitted)
        try:
            return self.run_admitted(gate, admitted)
        finally:
            gate.release(admitted)

    # -- replay -----------------------------------------------------------------------------

    def catch_up(self) -> Outcome | None:
        """Know the state to run on: the message's, unless this copy may have run before (a
        redelivery) or was sent while paused or compensating (the row has what the message
        does not carry: the run's error, and whether this visit is still due)."""
        if self.unacked < 0:
            self.unacked = self.base.version
        if self.redelivered and (outcome := self.before_rerun()) is not None:
            return outcome
        if self.base.status != Status.RUNNING and (outcome := self.refresh()) is not None:
            return outcome
        self.read_at, self.read_state = self.base.version, self.base.state
        return None

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

    # -- call -------------------------------------------------------------------------------

    def run_admitted(self, gate: Gate, admitted: Admitted) -> Outcome:
        """Past the gate: call the function under a lease, then commit what it returned."""
        with self.runtime.leases.watch(self.key) as lease:
            called = self.call(gate, self.context(VisitMemo(self)), admitted.turn)
        if isinstance(called, Outcome):
            return called
        gate.report(self, admitted, called if isinstance(called, Failure) else None)
        if isinstance(called, Failure):
            return fail(self, called)
        if lease.lost:
            return Outcome.DROPPED
        return self.commit_update(called, lease.token)

    def call(
        self, gate: Gate, ctx: Context, turn: Turn | None = None
    ) -> dict[str, Any] | Outcome | Failure:
        """The user's function on the validated state, at its rate turn: its update, or why
        there is none."""
        try:
            return self._timed_call(ctx, turn)
        except Superseded:
            return Outcome.DROPPED
        except Suspend:
            return Outcome.WAITING
        except HeldBack as back:
            return gate.wait(self, Hold(back.held, by_message=back.by_message))
        except Exception as exc:
            return Failure(_translate(exc, self.node), permanent=isinstance(exc, PERMANENT))

    def _timed_call(self, ctx: Context, turn: Turn | None) -> dict[str, Any]:
        """The call under the node's time limit, started at its rate turn; a slow one is
        logged."""
        node, started = self.node, time.monotonic()
        model, _ = fit(self.graph, self.base.state)
        args = (model, ctx) if node.wants_context else (model,)
        if turn is not None and (held := self.runtime.flow.meet(turn)) is not None:
            raise HeldBack(held, by_message=True)
        with time_limit(self.name, node.timeout, self._drop_lease):
            update = as_update(settled(node.fn(*args)))
        took = time.monotonic() - started
        if node.timeout is not None and took > node.timeout:
            raise NodeTimeout(self.name, node.timeout)
        slow = self.runtime.settings.slow_node_after
        if took > slow:
            logger.warning(
                "slow node: %s.%s visit %d of %s took %.1fs (slow_node_after is %gs)",
                *(self.graph.name, self.name, self.visit, self.execution_id, took, slow),
            )
            self.runtime.hooks.node_slow(self.execution_id, self.graph.name, self.name, took)
        return update

    def _drop_lease(self) -> None:
        """Before the hard time limit ends the process: let the redelivery run at once."""
        self.runtime.visits.drop_lease(*self.key)

    # -- commit -----------------------------------------------------------------------------

    def commit_update(self, update: dict[str, Any], lease_token: int) -> Outcome:
        """Commit the visit (rebasing on concurrent changes), then hand on what it made ready."""
        faults.hit(faults.BEFORE_COMMIT, self.name)
        landed = until_committed(
            self.execution_id, lambda conflict: self._send(update, lease_token, conflict)
        )
        if isinstance(landed, Failure):
            return fail(self, landed)
        if isinstance(landed, Outcome):
            return landed
        faults.hit(faults.AFTER_COMMIT, self.name)
        self.hand_on(landed)
        return Outcome.COMMITTED

    def _send(
        self, update: dict[str, Any], lease_token: int, conflict: VersionConflict | None
    ) -> Landed | Outcome | Failure:
        """One try: draft the commit on the current base, send it, build the next messages
        while it is in flight, collect its answer."""
        if (stop := self.rebase(conflict)) is not None:
            return stop
        clashing = self._written_since(update)
        made = draft(
            self, update, clashing=clashing, lease_token=lease_token, may_inline=self._may_inline
        )
        if isinstance(made, Failure):
            return made
        self.read_at, self.read_state = self.base.version, self.base.state
        started = time.perf_counter()
        pending = self.runtime.store.send(made.commit)
        messages = self._prepare(made)
        stop = self.collect(pending, made.commit, started)
        return Landed(made, messages) if stop is None else stop

    def _written_since(self, update: dict[str, Any]) -> set[str]:
        """Fields of ``update`` that node commits wrote since the state it was made from was
        read; none to look for when the base is that state, or when every field it writes
        has a reducer (parallel branches' usual case: no read then)."""
        mine = set(update) - set(self.graph.reducers)
        if self.base.version == self.read_at or not mine:
            return set()
        if self.graph.keep_checkpoints is not None:
            # The checkpoints in between may be compacted: compare the states instead.
            now, then = self.base.state, self.read_state
            return {name for name in mine if now.get(name) != then.get(name)}
        written: set[str] = set()
        history = self.runtime.store.list(self.execution_id, kinds=[Kind.NODE], after=self.read_at)
        for cp in history:
            if isinstance(cp.output, dict):
                written.update(cp.output)
        return written & mine

    def _prepare(self, made: Draft) -> list[Publication]:
        """The messages a commit hands on, built while it is in flight; sent only if it
        committed."""
        commit, handed = made.commit, made.handed
        if commit.status != Status.RUNNING or not handed.ready or handed.inline:
            return []
        after = Base.after(commit)
        return self.runtime.prepare_all(self.graph.name, self.execution_id, after, handed.ready)

    def _may_inline(self, ready: list[Visit]) -> bool:
        """Run the one node that follows in this task rather than publish it, where the
        dispatcher allows it, within ``inline_nodes`` and INLINE_SECONDS, and for a graph
        that keeps N checkpoints within N // 2 commits: what a message commits stays until
        its ack (engine/compaction.py), so handing on by message lets it go."""
        keep = self.graph.keep_checkpoints
        return (
            len(ready) == 1
            and self.depth < self.runtime.settings.inline_nodes
            and time.monotonic() - self.since < INLINE_SECONDS
            and (keep is None or self.base.version - self.unacked < keep // 2)
            and self.runtime.dispatcher.may_inline(
                self.graph, self.name, ready[0][0], self.base.cursor.queue
            )
        )

    # -- hand on ----------------------------------------------------------------------------

    def hand_on(self, landed: Landed) -> None:
        """After the commit: the next visit inline, the messages built during the commit,
        the undo that is due, or the run's end."""
        runtime, commit, handed = self.runtime, landed.draft.commit, landed.draft.handed
        runtime.hooks.node_committed(self.graph.name, self.name, commit)
        after = Base.after(commit)
        if commit.status == Status.RUNNING and handed.inline:
            ((name, visit),) = handed.ready
            self.successor = NodeRun(
                *(runtime, self.graph, name, self.execution_id, visit, after),
                depth=self.depth + 1,
                since=self.since,
                unacked=self.unacked,
            )
        elif commit.status == Status.RUNNING:
            for message in landed.messages:
                message.send()
        elif commit.status == Status.COMPENSATING:
            runtime.dispatch_undo(self.graph.name, self.execution_id, after)
        elif commit.status.finished:
            parent = after.cursor.parent
            wakeups.finished(runtime, self.execution_id, self.graph.name, commit.status, parent)
        if compaction.due(self.graph, self.visit, commit.status):
            # A run that ended has no message left to replay: all but the newest may go.
            unacked = commit.seq if commit.status.finished else self.unacked
            compaction.compact(
                runtime, self.graph, self.execution_id, commit.cursor, commit.seq, unacked
            )

    # -- giving up --------------------------------------------------------------------------

    def give_up(self, error: ErrorRecord) -> Outcome:
        """Attempts exhausted: fail the run, stop it for an operator (``intervene``, or a state
        a deploy left behind: no undo runs on it either), or for a saga start compensating."""
        self.runtime.hooks.node_failed(self.execution_id, self.graph.name, self.name, dict(error))
        mismatch = error["type"] == StateSchemaMismatch.__name__
        if self.graph.on_failure == "compensate" and not mismatch:
            return start_compensating(self, error)
        intervene = self.graph.on_failure == "intervene" or mismatch
        status = Status.NEEDS_INTERVENTION if intervene else Status.FAILED
        # The failed node stays due, so that retry() can run it again.
        commit = self.save(lambda: self.commit(Kind.FAILURE, status=status, error=error))
        if isinstance(commit, Outcome):
            return commit
        if intervene:
            return needs_intervention(self, error, "node")
        logger.error(
            "execution %s failed at %s.%s: %s",
            *(self.execution_id, self.graph.name, self.name, error["message"]),
        )
        parent = self.base.cursor.parent
        wakeups.finished(self.runtime, self.execution_id, self.graph.name, Status.FAILED, parent)
        return Outcome.FAILED


def _translate(exc: Exception, node: NodeDefinition) -> Exception:
    if type(exc).__name__ == "SoftTimeLimitExceeded" and node.timeout is not None:
        return NodeTimeout(node.name, node.timeout)
    return exc
