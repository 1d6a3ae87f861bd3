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
from typing import TYPE_CHECKING, Any

from celery_durable.errors import (
    CannotSkip,
    InvalidInput,
    InvalidTransition,
    NothingToCompensate,
    UnknownNode,
    VersionConflict,
)
from celery_durable.persistence.records import Commit, ExecutionRecord
from celery_durable.saga import compensation
from celery_durable.saga.coordinator import Cursor, advance
from celery_durable.status import Status
from celery_durable.tasks.attempt import MAX_COMMIT_TRIES, Base
from celery_durable.tasks.node import NODE
from celery_durable.tasks.state import apply_update, validate

if TYPE_CHECKING:
    from celery_durable.durable import Durable
    from celery_durable.tasks.graph import Graph

MANUAL = "manual"
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
    error: dict[str, Any] | None
    kind: str = MANUAL
    node: str | None = None
    visit: int | None = None
    output: Any = None
    meta: dict[str, Any] | None = None


class Operations:
    """The operations behind Execution's methods and the CLI."""

    def __init__(self, durable: Durable) -> None:
        self.durable = durable

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
        store = self.durable.store
        for _ in range(MAX_COMMIT_TRIES):
            record = store.get_execution(execution_id)
            if record.status not in allowed:
                raise InvalidTransition(execution_id, op, record.status, allowed)
            c = change(record)
            commit = Commit(
                execution_id=execution_id,
                expected_version=record.version,
                kind=c.kind,
                node=c.node if c.node is not None else op,
                visit=c.visit if c.visit is not None else record.version + 1,
                state=c.state,
                cursor=c.cursor.to_json(),
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
                self.durable.hooks.execution_finished(execution_id, record.graph, c.status)
            return record, commit
        raise VersionConflict(execution_id, -1)

    def _graph(self, record: ExecutionRecord) -> Graph:
        return self.durable.graph_of(record.graph)

    def _dispatch_frontier(self, graph: Graph, execution_id: str, commit: Commit) -> None:
        base = _base(commit)
        for name, visit in base.cursor.frontier:
            self.durable.dispatch(graph, name, visit, execution_id, base)

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
        graph, base = self._graph(record), _base(commit)
        for name, visit in Cursor.from_json(record.cursor).held:
            self.durable.dispatch(graph, name, visit, execution_id, base)

    def cancel(
        self, execution_id: str, *, by: str | None = None, reason: str | None = None
    ) -> None:
        """Nothing new is dispatched, the tasks in flight are revoked, status cancelled."""
        error = {"type": "Cancelled", "message": reason or "cancelled by an operator"}
        record, _ = self.apply(
            execution_id,
            "cancel",
            {S.PENDING, S.RUNNING, S.PAUSED, S.WAITING, S.FAILED, S.NEEDS_INTERVENTION},
            lambda r: Change(r.state, Cursor.from_json(r.cursor), S.CANCELLED, error),
            by=by,
            reason=reason,
        )
        ids = [
            task_id(execution_id, name, visit, attempt)
            for name, visit in Cursor.from_json(record.cursor).frontier
            for attempt in range(1, self._attempts(execution_id, NODE, name, visit) + 2)
        ]
        if ids:
            self.durable.app.control.revoke(ids)

    def retry(self, execution_id: str, *, by: str | None = None, reason: str | None = None) -> None:
        """A failed run from its failure point, or a stuck compensation from where it stopped."""
        record = self.durable.store.get_execution(execution_id)
        graph = self._graph(record)
        cursor = Cursor.from_json(record.cursor)
        missing = [name for name, _ in cursor.frontier if name not in graph.nodes]
        if missing:
            raise UnknownNode(graph.name, missing[0], sorted(graph.nodes))

        def change(r: ExecutionRecord) -> Change:
            c = Cursor.from_json(r.cursor)
            if r.status == S.NEEDS_INTERVENTION and c.undo:
                original = (r.error or {}).get("original")
                return Change(r.state, c, compensation.status_of(c), original)
            return Change(r.state, c, _running(r), None)

        record, commit = self.apply(
            execution_id, "retry", {S.FAILED, S.NEEDS_INTERVENTION}, change, by=by, reason=reason
        )
        base = _base(commit)
        for name, visit in base.cursor.frontier:
            self.durable.visits.reset(execution_id, NODE, name, visit)
        if base.status == S.COMPENSATING:
            name, visit, _ = base.cursor.undo[0]
            self.durable.visits.reset(execution_id, compensation.COMPENSATION, name, visit)
            compensation.proceed(self.durable, graph, execution_id, base)
        else:
            self._dispatch_frontier(graph, execution_id, commit)

    def restart_from(
        self, execution_id: str, seq: int, *, by: str | None = None, reason: str | None = None
    ) -> None:
        """Time travel: the run goes on from checkpoint ``seq``; its history stays."""
        self.durable.store.get_execution(execution_id)  # ExecutionNotFound before anything
        checkpoint = self.durable.store.load(execution_id, seq)

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
        record = self.durable.store.get_execution(execution_id)
        checkpoint = self.durable.store.load(execution_id, seq)
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
        created, made = self.durable.store.create_execution(
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
            for name, visit in cursor.frontier:
                self.durable.dispatch(graph, name, visit, new_id, base)
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
        record = self.durable.store.get_execution(execution_id)
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
        graph: Graph,
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
                kind=NODE,
                node=node,
                visit=visit,
                output=output,
                meta={"next": step.ready, "skipped": True},
            )

        _, commit = self.apply(
            record.id, "skip", {S.FAILED, S.NEEDS_INTERVENTION}, change, by=by, reason=reason
        )
        base = _base(commit)
        for name, v in (commit.meta or {}).get("next", []):
            self.durable.dispatch(graph, name, v, record.id, base)

    def _skip_compensation(
        self, record: ExecutionRecord, graph: Graph, node: str, by: str | None, reason: str | None
    ) -> None:
        head, visit, seq = Cursor.from_json(record.cursor).undo[0]
        if head != node:
            raise CannotSkip(record.id, node, f"the compensation waiting is {head!r}'s")

        def change(r: ExecutionRecord) -> Change:
            cursor = Cursor.from_json(r.cursor)
            cursor.undo.pop(0)
            original = (r.error or {}).get("original")
            return Change(
                r.state,
                cursor,
                compensation.status_of(cursor),
                original,
                kind=compensation.COMPENSATION,
                node=node,
                visit=visit,
                meta={"step_seq": seq, "skipped": True},
            )

        _, commit = self.apply(
            record.id, "skip", {S.NEEDS_INTERVENTION}, change, by=by, reason=reason
        )
        compensation.proceed(self.durable, graph, record.id, _base(commit))

    def update_state(
        self,
        execution_id: str,
        patch: dict[str, Any],
        *,
        by: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Patch fields of the state by hand; the patch is validated by the state model."""
        record = self.durable.store.get_execution(execution_id)
        graph = self._graph(record)
        _check_fields(graph, patch)

        def change(r: ExecutionRecord) -> Change:
            model = validate(graph.name, graph.state, apply_update(r.state, patch, {}))
            state = model.model_dump(mode="json")
            self.durable.state_json(state)  # refuses an oversized patch before it is stored
            return Change(state, Cursor.from_json(r.cursor), r.status, r.error, output=patch)

        self.apply(execution_id, "patch", set(S) - FINAL, change, by=by, reason=reason)

    def compensate(
        self, execution_id: str, *, by: str | None = None, reason: str | None = None
    ) -> None:
        """Undo the completed steps newest first; steps in flight commit or fail first."""
        record = self.durable.store.get_execution(execution_id)
        if record.status in (S.COMPENSATED, S.COMPENSATING):
            return
        graph = self._graph(record)
        if not any(node.compensator is not None for node in graph.nodes.values()):
            raise NothingToCompensate(execution_id, graph.name)
        error = {"type": "CompensationRequested", "message": reason or "requested by an operator"}

        def change(r: ExecutionRecord) -> Change:
            cursor = Cursor.from_json(r.cursor)
            # Steps in flight commit (and join the undo list) or fail before undoing starts;
            # steps held by a pause never start; a failed step committed nothing to undo.
            in_flight = cursor.in_flight if r.status in (S.RUNNING, S.PAUSED) else []
            cursor.frontier, cursor.held = in_flight, []
            cursor.undo = compensation.plan(self.durable, graph, execution_id)
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
            self.durable.hooks.execution_finished(execution_id, graph.name, S.COMPENSATED)
        compensation.proceed(self.durable, graph, execution_id, _base(commit))

    def _attempts(self, execution_id: str, kind: str, node: str, visit: int) -> int:
        found = self.durable.visits.get(execution_id, kind, node, visit)
        return found.attempts if found else 0


def task_id(
    execution_id: str, node: str, visit: int, attempt: int, compensation: bool = False
) -> str:
    """Task ids say what they run, so Flower can be searched by execution id and cancel()
    can revoke what is in flight without having stored anything."""
    suffix = ".compensate" if compensation else ""
    return f"{execution_id}.{node}{suffix}.{visit}.{attempt}"


def _base(commit: Commit) -> Base:
    return Base(
        commit.seq, commit.state, Cursor.from_json(commit.cursor), commit.status, commit.error
    )


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


def _check_fields(graph: Graph, patch: dict[str, Any]) -> None:
    unknown = sorted(set(patch) - set(graph.state.model_fields))
    if unknown:
        raise InvalidInput(
            graph.name,
            f"the state model {graph.state.__name__} has no field(s) {', '.join(unknown)}",
        )
