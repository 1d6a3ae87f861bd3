"""Control operations on an execution. Each is one version-checked commit of a checkpoint that
says what was done, by whom and why, and each is refused, changing nothing, when the status
does not allow it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from celery_durable.engine import wakeups
from celery_durable.engine.actors import actor
from celery_durable.engine.audit import Audited, Change
from celery_durable.engine.base import Base
from celery_durable.engine.state import apply_update, check_fields, validate
from celery_durable.errors import (
    InvalidTransition,
    NothingToCompensate,
    NotWaiting,
    UnknownNode,
)
from celery_durable.model.records import (
    ExecutionRecord,
    Kind,
    error_record,
)
from celery_durable.saga import compensation
from celery_durable.saga.shape import GraphShape
from celery_durable.status import Status

logger = logging.getLogger(__name__)

S = Status
FINAL = frozenset({S.SUCCEEDED, S.COMPENSATED, S.CANCELLED})
# The statuses each operation accepts (resume: a paused run, or one waiting at an approval).
ALLOWED: dict[str, frozenset[Status]] = {
    "pause": frozenset({S.RUNNING, S.WAITING}),
    "resume": frozenset({S.PAUSED, S.WAITING}),
    "cancel": frozenset(
        {S.PENDING, S.RUNNING, S.PAUSED, S.WAITING, S.FAILED, S.NEEDS_INTERVENTION}
    ),
    "retry": frozenset({S.FAILED, S.NEEDS_INTERVENTION}),
    "compensate": frozenset({S.RUNNING, S.PAUSED, S.WAITING, S.FAILED, S.SUCCEEDED}),
}


class Operations(Audited):
    """The operations behind Execution's methods and the CLI."""

    def pause(self, execution_id: str, *, by: str | None = None, reason: str | None = None) -> None:
        """The running node commits; nothing new is dispatched until resume()."""
        self.apply(
            execution_id,
            "pause",
            ALLOWED["pause"],
            lambda r: Change(r.state, r.cursor, S.PAUSED, r.error),
            by=by,
            reason=reason,
        )

    def resume(
        self,
        execution_id: str,
        update: dict[str, Any] | None = None,
        *,
        by: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Unpause: dispatch what became due while paused. Or approve the run's interrupt:
        ``update`` (validated by the state model) is applied in the same audited commit."""
        record = self.runtime.store.get_execution(execution_id)
        patch = self._patcher(self._graph(record), update) if update else None
        if record.status != S.PAUSED:
            self._approve(record, patch, by, reason)
            return

        def change(r: ExecutionRecord) -> Change:
            cursor = r.cursor.copy()
            cursor.held = []
            state = patch(r.state) if patch else r.state
            return Change(state, cursor, cursor.settled(), r.error, output=update)

        record, commit = self.apply(
            execution_id, "resume", {S.PAUSED}, change, by=by, reason=reason
        )
        held = record.cursor.held
        self.runtime.dispatch_all(record.graph, execution_id, Base.after(commit), held)

    def _approve(
        self,
        record: ExecutionRecord,
        patch: wakeups.Patch | None,
        by: str | None,
        reason: str | None,
    ) -> None:
        interrupts = [k for k, w in Base.of(record).cursor.waits.items() if w.kind == "interrupt"]
        if record.status not in (S.WAITING, S.RUNNING):
            raise InvalidTransition(record.id, "resume", record.status, ALLOWED["resume"])
        if not interrupts:
            raise NotWaiting(record.id, "an approval (interrupt_before/after)", record.status)
        meta = {"op": "resume", "by": actor(by), "reason": reason}
        approved = wakeups.wake(
            self.runtime,
            record.id,
            interrupts[0],
            lambda r, w: {"approved": True},
            patch=patch,
            meta=meta,
        )
        if not approved:
            raise NotWaiting(record.id, "this approval any more", record.status)

    def _patcher(self, graph: GraphShape, patch: dict[str, Any]) -> wakeups.Patch:
        """The state with ``patch`` applied, refused (before anything is stored) if a field is
        unknown, the model rejects a value, or the state grows too large."""
        check_fields(graph, patch)

        def patched(state: dict[str, Any]) -> dict[str, Any]:
            model = validate(graph.name, graph.state, apply_update(state, patch, {}))
            dumped = model.model_dump(mode="json")
            self.runtime.state_json(dumped)
            return dumped

        return patched

    def cancel(
        self, execution_id: str, *, by: str | None = None, reason: str | None = None
    ) -> None:
        """Nothing new is dispatched, the tasks in flight are revoked, status cancelled."""
        error = error_record("Cancelled", reason or "cancelled by an operator")
        record, _ = self.apply(
            execution_id,
            "cancel",
            ALLOWED["cancel"],
            lambda r: Change(r.state, r.cursor, S.CANCELLED, error),
            by=by,
            reason=reason,
        )
        for child in self.runtime.store.children(execution_id):
            if not child.status.finished:
                with contextlib.suppress(InvalidTransition):
                    self.cancel(child.id, by=by, reason=f"its parent {execution_id} was cancelled")
        in_flight = [
            (name, visit, self._attempts(execution_id, Kind.NODE, name, visit))
            for name, visit in record.cursor.frontier
        ]
        try:
            self.runtime.dispatcher.revoke(execution_id, in_flight)
        except Exception as exc:
            # The cancel is committed: what is in flight finds the run cancelled and stops.
            logger.warning(
                "execution %s cancelled; its tasks in flight could not be revoked (%s), and "
                "stop when they find it cancelled",
                execution_id,
                exc,
            )

    def retry(self, execution_id: str, *, by: str | None = None, reason: str | None = None) -> None:
        """A failed run from its failure point, or a stuck compensation from where it stopped."""
        record = self.runtime.store.get_execution(execution_id)
        graph = self._graph(record)
        missing = [name for name, _ in record.cursor.frontier if name not in graph.nodes]
        if missing:
            raise UnknownNode(graph.name, missing[0], sorted(graph.nodes))

        def change(r: ExecutionRecord) -> Change:
            c = r.cursor
            if r.status == S.NEEDS_INTERVENTION and c.undo:
                original = r.error.get("original") if r.error else None
                return Change(r.state, c, compensation.status_of(c), original)
            return Change(r.state, c, c.settled(), None)

        record, commit = self.apply(
            execution_id, "retry", ALLOWED["retry"], change, by=by, reason=reason
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

    def update_state(
        self,
        execution_id: str,
        patch: dict[str, Any],
        *,
        by: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Patch fields of the state by hand; the patch is validated by the state model."""
        patched = self._patcher(self._graph(self.runtime.store.get_execution(execution_id)), patch)

        def change(r: ExecutionRecord) -> Change:
            return Change(patched(r.state), r.cursor, r.status, r.error, output=patch)

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
            cursor = r.cursor.copy()
            # Steps in flight commit (and join the undo list) or fail before undoing starts;
            # steps held by a pause never start; a failed step committed nothing to undo.
            live = (S.RUNNING, S.PAUSED, S.WAITING)
            in_flight = cursor.in_flight if r.status in live else []
            # Waits end: nothing that waits has started, so nothing of it is undone.
            cursor.frontier, cursor.held, cursor.waits = in_flight, [], {}
            cursor.undo = compensation.plan(graph, self.runtime.store.list(execution_id))
            keep = r.error if r.status == S.FAILED else error
            return Change(r.state, cursor, compensation.status_of(cursor), keep)

        _, commit = self.apply(
            execution_id,
            "compensate",
            ALLOWED["compensate"],
            change,
            by=by,
            reason=reason,
        )
        if commit.status == S.COMPENSATED:
            parent = Base.after(commit).cursor.parent
            wakeups.finished(self.runtime, execution_id, graph.name, S.COMPENSATED, parent)
        self.runtime.dispatch_undo(graph.name, execution_id, Base.after(commit))

    def _attempts(self, execution_id: str, kind: Kind, node: str, visit: int) -> int:
        found = self.runtime.visits.get(execution_id, kind, node, visit)
        return found.attempts if found else 0
