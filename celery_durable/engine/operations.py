"""Control operations on an execution. Each is one version-checked commit of a checkpoint that
says what was done, by whom and why, and each is refused, changing nothing, when the status
does not allow it.
"""

from __future__ import annotations

import getpass
import socket
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from celery_durable.engine.base import MAX_COMMIT_TRIES, Base
from celery_durable.engine.runtime import Runtime
from celery_durable.engine.state import apply_update, validate
from celery_durable.errors import (
    CannotSkip,
    InvalidInput,
    InvalidTransition,
    NothingToCompensate,
    UnknownNode,
    VersionConflict,
)
from celery_durable.persistence.records import (
    Commit,
    ErrorRecord,
    ExecutionRecord,
    Kind,
    error_record,
)
from celery_durable.saga import compensation
from celery_durable.saga.coordinator import Cursor, Handed, advance
from celery_durable.saga.shape import GraphShape
from celery_durable.status import Status

S = Status
FINAL = frozenset({S.SUCCEEDED, S.COMPENSATED, S.CANCELLED})


def actor(by: str | None) -> str:
    return by or f"{getpass.getuser()}@{socket.gethostname()}"


@dataclass(frozen=True, slots=True)
class Change:
    """What an operation does to the execution row, besides appending its checkpoint."""

    state: dict[str, Any]
    cursor: Cursor
    status: Status
    error: ErrorRecord | None
    kind: Kind = Kind.MANUAL
    node: str | None = None
    visit: int | None = None
    output: Any = None
    meta: dict[str, Any] | None = None


class Operations:
    """The operations behind Execution's methods and the CLI."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    # -- the one way an operation commits ---------------------------------------------------

    def apply(
        self,
        execution_id: str,
        op: str,
        allowed: Iterable[Status],
        change: Callable[[ExecutionRecord], Change],
        *,
        by: str | None,
        reason: str | None,
    ) -> tuple[ExecutionRecord, Commit]:
        allowed = frozenset(allowed)
        store = self.runtime.store
        for _ in range(MAX_COMMIT_TRIES):
            record = store.get_execution(execution_id)
            if record.status not in allowed:
                raise InvalidTransition(execution_id, op, record.status, allowed)
            c = change(record)
            commit = Base.of(record).commit(
                execution_id,
                c.kind,
                c.node if c.node is not None else op,
                c.visit if c.visit is not None else record.version + 1,
                state=c.state,
                cursor=c.cursor,
                status=c.status,
                output=c.output,
                meta={"op": op, "by": actor(by), "reason": reason, **(c.meta or {})},
                error=c.error,
            )
            try:
                store.save(commit)
            except VersionConflict:
                continue
            if c.status.finished and c.status != record.status:
                self.runtime.hooks.execution_finished(execution_id, record.graph, c.status)
            return record, commit
        raise VersionConflict(execution_id, -1)

    def _graph(self, record: ExecutionRecord) -> GraphShape:
        return self.runtime.graph(record.graph)

    def _dispatch_frontier(self, graph: GraphShape, execution_id: str, commit: Commit) -> None:
        base = Base.after(commit)
        self.runtime.dispatch_all(graph.name, execution_id, base, base.cursor.frontier)

    # -- operations -------------------------------------------------------------------------

    def pause(self, execution_id: str, *, by: str | None = None, reason: str | None = None) -> None:
        """The running node commits; nothing new is dispatched until resume()."""
        self.apply(
            execution_id,
            "pause",
            {S.RUNNING},
            lambda r: Change(r.state, Cursor.from_json(r.cursor), S.PAUSED, r.error),
            by=by,
            reason=reason,
        )

    def resume(
        self, execution_id: str, *, by: str | None = None, reason: str | None = None
    ) -> None:
        """Dispatch what became due while paused; what was in flight then has run already."""

        def change(r: ExecutionRecord) -> Change:
            cursor = Cursor.from_json(r.cursor)
            cursor.held = []
            return Change(r.state, cursor, _running(r), r.error)

        record, commit = self.apply(
            execution_id, "resume", {S.PAUSED}, change, by=by, reason=reason
        )
        held = Cursor.from_json(record.cursor).held
        self.runtime.dispatch_all(record.graph, execution_id, Base.after(commit), held)

    def cancel(
        self, execution_id: str, *, by: str | None = None, reason: str | None = None
    ) -> None:
        """Nothing new is dispatched, the tasks in flight are revoked, status cancelled."""
        error = error_record("Cancelled", reason or "cancelled by an operator")
        record, _ = self.apply(
            execution_id,
            "cancel",
            {S.PENDING, S.RUNNING, S.PAUSED, S.WAITING, S.FAILED, S.NEEDS_INTERVENTION},
            lambda r: Change(r.state, Cursor.from_json(r.cursor), S.CANCELLED, error),
            by=by,
            reason=reason,
        )
        in_flight = [
            (name, visit, self._attempts(execution_id, Kind.NODE, name, visit))
            for name, visit in Cursor.from_json(record.cursor).frontier
        ]
        self.runtime.dispatcher.revoke(execution_id, in_flight)

    def retry(self, execution_id: str, *, by: str | None = None, reason: str | None = None) -> None:
        """A failed run from its failure point, or a stuck compensation from where it stopped."""
        record = self.runtime.store.get_execution(execution_id)
        graph = self._graph(record)
        cursor = Cursor.from_json(record.cursor)
        missing = [name for name, _ in cursor.frontier if name not in graph.nodes]
        if missing:
            raise UnknownNode(graph.name, missing[0], sorted(graph.nodes))

        def change(r: ExecutionRecord) -> Change:
            c = Cursor.from_json(r.cursor)
            if r.status == S.NEEDS_INTERVENTION and c.undo:
                original = r.error.get("original") if r.error else None
                return Change(r.state, c, compensation.status_of(c), original)
            return Change(r.state, c, _running(r), None)

        record, commit = self.apply(
            execution_id, "retry", {S.FAILED, S.NEEDS_INTERVENTION}, change, by=by, reason=reason
        )
        base = Base.after(commit)
        for name, visit in base.cursor.frontier:
            self.runtime.visits.reset(execution_id, Kind.NODE, name, visit)
        if base.status != S.COMPENSATING:
            self._dispatch_frontier(graph, execution_id, commit)
            return
        undo = compensation.due(base.status, base.cursor)
        if undo is not None:
            self.runtime.visits.reset(execution_id, Kind.COMPENSATION, undo[0], undo[1])
        self.runtime.dispatch_undo(graph.name, execution_id, base)

    def restart_from(
        self, execution_id: str, seq: int, *, by: str | None = None, reason: str | None = None
    ) -> None:
        """Time travel: the run goes on from checkpoint ``seq``; its history stays."""
        self.runtime.store.get_execution(execution_id)  # ExecutionNotFound before anything
        checkpoint = self.runtime.store.load(execution_id, seq)

        def change(r: ExecutionRecord) -> Change:
            cursor = _renumbered(Cursor.from_json(checkpoint.cursor), Cursor.from_json(r.cursor))
            status = S.RUNNING if cursor.frontier else S.SUCCEEDED
            return Change(checkpoint.state, cursor, status, None, meta={"from_seq": seq})

        record, commit = self.apply(
            execution_id,
            "restart",
            set(S) - {S.RUNNING, S.COMPENSATING, S.PENDING},
            change,
            by=by,
            reason=reason,
        )
        self._dispatch_frontier(self._graph(record), execution_id, commit)

    def fork(
        self,
        execution_id: str,
        seq: int,
        *,
        new_id: str | None = None,
        by: str | None = None,
        reason: str | None = None,
    ) -> str:
        """A new execution that starts from checkpoint ``seq`` of this one."""
        record = self.runtime.store.get_execution(execution_id)
        checkpoint = self.runtime.store.load(execution_id, seq)
        graph = self._graph(record)
        cursor = _renumbered(Cursor.from_json(checkpoint.cursor), Cursor())
        new_id = new_id or uuid.uuid4().hex
        meta = {
            "op": "fork",
            "by": actor(by),
            "reason": reason,
            "from": execution_id,
            "from_seq": seq,
        }
        created, made = self.runtime.store.create_execution(
            execution_id=new_id,
            graph=graph.name,
            fingerprint=graph.validate(),
            state=checkpoint.state,
            cursor=cursor.to_json(),
            status=S.RUNNING if cursor.frontier else S.SUCCEEDED,
            meta=meta,
        )
        if made:
            base = Base(0, created.state, cursor)
            self.runtime.dispatch_all(graph.name, new_id, base, cursor.frontier)
        return new_id

    def skip(
        self,
        execution_id: str,
        node: str,
        output: dict[str, Any] | None = None,
        *,
        by: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Mark the failed node done with ``output`` (a state update), or the compensation
        waiting for intervention done by hand."""
        record = self.runtime.store.get_execution(execution_id)
        graph = self._graph(record)
        cursor = Cursor.from_json(record.cursor)
        if record.status == S.NEEDS_INTERVENTION and cursor.undo:
            self._skip_compensation(record, graph, node, by, reason)
        elif record.status in (S.FAILED, S.NEEDS_INTERVENTION):
            # A failed node, or a node a changed definition no longer has.
            self._skip_node(record, graph, node, output or {}, by, reason)
        else:
            raise CannotSkip(execution_id, node, f"the run is {record.status}")

    def _skip_node(
        self,
        record: ExecutionRecord,
        graph: GraphShape,
        node: str,
        output: dict[str, Any],
        by: str | None,
        reason: str | None,
    ) -> None:
        due = [v for n, v in Cursor.from_json(record.cursor).frontier if n == node]
        if not due:
            raise CannotSkip(record.id, node, "it is not the node the run failed at")
        visit = due[0]
        _check_fields(graph, output)

        def change(r: ExecutionRecord) -> Change:
            model = validate(graph.name, graph.state, apply_update(r.state, output, {}))
            step = advance(graph, Cursor.from_json(r.cursor), node, visit, model)
            return Change(
                model.model_dump(mode="json"),
                step.cursor,
                step.status,
                step.error,
                kind=Kind.NODE,
                node=node,
                visit=visit,
                output=output,
                meta={**Handed(step.ready).meta(), "skipped": True},
            )

        _, commit = self.apply(
            record.id, "skip", {S.FAILED, S.NEEDS_INTERVENTION}, change, by=by, reason=reason
        )
        ready = Handed.of(commit.meta).ready
        self.runtime.dispatch_all(graph.name, record.id, Base.after(commit), ready)

    def _skip_compensation(
        self,
        record: ExecutionRecord,
        graph: GraphShape,
        node: str,
        by: str | None,
        reason: str | None,
    ) -> None:
        head, visit, seq = Cursor.from_json(record.cursor).undo[0]
        if head != node:
            raise CannotSkip(record.id, node, f"the compensation waiting is {head!r}'s")

        def change(r: ExecutionRecord) -> Change:
            cursor = Cursor.from_json(r.cursor)
            cursor.undo.pop(0)
            original = r.error.get("original") if r.error else None
            return Change(
                r.state,
                cursor,
                compensation.status_of(cursor),
                original,
                kind=Kind.COMPENSATION,
                node=node,
                visit=visit,
                meta={"step_seq": seq, "skipped": True},
            )

        _, commit = self.apply(
            record.id, "skip", {S.NEEDS_INTERVENTION}, change, by=by, reason=reason
        )
        self.runtime.dispatch_undo(graph.name, record.id, Base.after(commit))

    def update_state(
        self,
        execution_id: str,
        patch: dict[str, Any],
        *,
        by: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Patch fields of the state by hand; the patch is validated by the state model."""
        record = self.runtime.store.get_execution(execution_id)
        graph = self._graph(record)
        _check_fields(graph, patch)

        def change(r: ExecutionRecord) -> Change:
            model = validate(graph.name, graph.state, apply_update(r.state, patch, {}))
            state = model.model_dump(mode="json")
            self.runtime.state_json(state)  # refuses an oversized patch before it is stored
            return Change(state, Cursor.from_json(r.cursor), r.status, r.error, output=patch)

        self.apply(execution_id, "patch", set(S) - FINAL, change, by=by, reason=reason)

    def compensate(
        self, execution_id: str, *, by: str | None = None, reason: str | None = None
    ) -> None:
        """Undo the completed steps newest first; steps in flight commit or fail first."""
        record = self.runtime.store.get_execution(execution_id)
        if record.status in (S.COMPENSATED, S.COMPENSATING):
            return
        graph = self._graph(record)
        if not any(node.compensator is not None for node in graph.nodes.values()):
            raise NothingToCompensate(execution_id, graph.name)
        error = error_record("CompensationRequested", reason or "requested by an operator")

        def change(r: ExecutionRecord) -> Change:
            cursor = Cursor.from_json(r.cursor)
            # Steps in flight commit (and join the undo list) or fail before undoing starts;
            # steps held by a pause never start; a failed step committed nothing to undo.
            in_flight = cursor.in_flight if r.status in (S.RUNNING, S.PAUSED) else []
            cursor.frontier, cursor.held = in_flight, []
            cursor.undo = compensation.plan(graph, self.runtime.store.list(execution_id))
            keep = r.error if r.status == S.FAILED else error
            return Change(r.state, cursor, compensation.status_of(cursor), keep)

        _, commit = self.apply(
            execution_id,
            "compensate",
            {S.RUNNING, S.PAUSED, S.FAILED, S.SUCCEEDED},
            change,
            by=by,
            reason=reason,
        )
        if commit.status == S.COMPENSATED:
            self.runtime.hooks.execution_finished(execution_id, graph.name, S.COMPENSATED)
        self.runtime.dispatch_undo(graph.name, execution_id, Base.after(commit))

    def _attempts(self, execution_id: str, kind: Kind, node: str, visit: int) -> int:
        found = self.runtime.visits.get(execution_id, kind, node, visit)
        return found.attempts if found else 0


def _running(record: ExecutionRecord) -> Status:
    return S.RUNNING if Cursor.from_json(record.cursor).frontier else S.SUCCEEDED


def _renumbered(target: Cursor, current: Cursor) -> Cursor:
    """``target``'s position with visit numbers past every visit made so far."""
    visits = dict(current.visits)
    frontier = []
    for name, _ in target.frontier:
        visits[name] = visits.get(name, 0) + 1
        frontier.append((name, visits[name]))
    return Cursor(frontier=frontier, visits=visits, joins=dict(target.joins), queue=target.queue)


def _check_fields(graph: GraphShape, patch: dict[str, Any]) -> None:
    unknown = sorted(set(patch) - set(graph.state.model_fields))
    if unknown:
        raise InvalidInput(
            graph.name,
            f"the state model {graph.state.__name__} has no field(s) {', '.join(unknown)}",
        )
