"""Repairs and time travel: skip a failed node or a stuck compensation, restart a run from
an earlier checkpoint, fork a new run from one. Each is an audited commit (``audit``)."""

from __future__ import annotations

import uuid
from typing import Any

from celery_durable.engine.actors import actor
from celery_durable.engine.audit import Audited, Change
from celery_durable.engine.base import Base
from celery_durable.engine.state import apply_update, check_fields, validate
from celery_durable.errors import CannotSkip
from celery_durable.model.cursor import Cursor
from celery_durable.model.records import ExecutionRecord, Kind
from celery_durable.saga import compensation
from celery_durable.saga.coordinator import Handed, advance, interrupt
from celery_durable.saga.shape import GraphShape
from celery_durable.status import Status

S = Status


class Repairs(Audited):
    """The repairs behind Execution's methods and the CLI."""

    def restart_from(
        self, execution_id: str, seq: int, *, by: str | None = None, reason: str | None = None
    ) -> None:
        """Time travel: the run goes on from checkpoint ``seq``; its history stays."""
        # ExecutionNotFound before anything; the graph's name decides nothing, even from a
        # damaged row, which a restart heals.
        graph = self._graph(self.runtime.store.get_execution(execution_id, verify=False))
        checkpoint, state = self.runtime.store.state_at(execution_id, seq)

        def change(r: ExecutionRecord) -> Change:
            cursor = _renumbered(checkpoint.cursor, r.cursor)
            interrupt(graph, cursor, cursor.frontier)
            return Change(state, cursor, cursor.settled(), None, meta={"from_seq": seq})

        record, commit = self.apply(
            execution_id,
            "restart",
            set(S) - {S.RUNNING, S.COMPENSATING, S.PENDING},
            change,
            by=by,
            reason=reason,
            rewrites_row=True,
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
        """A new execution that starts from checkpoint ``seq`` of this one, with its tags."""
        record = self.runtime.store.get_execution(execution_id)
        checkpoint, state = self.runtime.store.state_at(execution_id, seq)
        graph = self._graph(record)
        cursor = _renumbered(checkpoint.cursor, Cursor(graph_version=record.cursor.graph_version))
        interrupt(graph, cursor, cursor.frontier)
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
            state=state,
            cursor=cursor,
            status=cursor.settled(),
            meta=meta,
            tags=self.runtime.store.tags_of([execution_id]).get(execution_id, {}),
        )
        if made:
            base = Base(0, created.state, cursor)
            self.runtime.dispatch_all(graph.name, new_id, base, cursor.in_flight)
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
        if record.status == S.NEEDS_INTERVENTION and record.cursor.undo:
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
        due = [v for n, v in record.cursor.frontier if n == node]
        if not due:
            raise CannotSkip(record.id, node, "it is not the node the run failed at")
        visit = due[0]
        check_fields(graph, output)

        def change(r: ExecutionRecord) -> Change:
            model = validate(graph.name, graph.state, apply_update(r.state, output, {}))
            step = advance(graph, r.cursor, node, visit, model)
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
        head, visit, seq = record.cursor.undo[0]
        if head != node:
            raise CannotSkip(record.id, node, f"the compensation waiting is {head!r}'s")

        def change(r: ExecutionRecord) -> Change:
            cursor = r.cursor.copy()
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


def _renumbered(target: Cursor, current: Cursor) -> Cursor:
    """``target``'s position with visit numbers past every visit made so far, on the
    version of the graph the run is on now."""
    visits = dict(current.visits)
    frontier = []
    for name, _ in target.frontier:
        visits[name] = visits.get(name, 0) + 1
        frontier.append((name, visits[name]))
    return Cursor(
        frontier=frontier,
        visits=visits,
        joins=dict(target.joins),
        queue=target.queue,
        parent=current.parent,
        graph_version=current.graph_version,
    )
