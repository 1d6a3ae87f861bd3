"""A run's version when the code changed under it: moving it onto another deployed version
(``Upgrades.upgrade``), and stopping it for an operator when no live worker has its own.

Every run is pinned to the version of its graph that started it (its cursor carries it, so
every message does). A worker never runs a visit on another version's structure: a visit
whose version it lacks goes to a worker that has it (tasks/forwarding.py), or, when the fleet
has none, the run stops here as needs_intervention until it is deployed again or upgraded.
"""

from __future__ import annotations

import logging

from celery_durable.engine.audit import Audited, Change
from celery_durable.engine.base import Base
from celery_durable.engine.definition import GraphDefinition
from celery_durable.engine.fleet import difference
from celery_durable.engine.rebase import current_row, until_committed
from celery_durable.engine.runtime import Runtime
from celery_durable.engine.state import fit
from celery_durable.errors import CannotUpgrade, GraphVersionMissing, VersionConflict
from celery_durable.model.records import ExecutionRecord, Kind, error_record
from celery_durable.status import Status

logger = logging.getLogger(__name__)

S = Status
# A run in these may be moved (no node of it runs: checked on its cursor for the waiting
# and the paused).
UPGRADABLE = frozenset({S.FAILED, S.NEEDS_INTERVENTION, S.WAITING, S.PAUSED})
# A run in these has messages that a worker may find it cannot run.
STOPPABLE = frozenset({S.PENDING, S.RUNNING, S.COMPENSATING, S.PAUSED, S.WAITING})
MISSING = GraphVersionMissing.__name__


class Upgrades(Audited):
    def upgrade(
        self,
        execution_id: str,
        version: str | None = None,
        *,
        by: str | None = None,
        reason: str | None = None,
    ) -> str:
        """Move the run onto ``version`` of its graph as this process defines it (default:
        the newest); returns the version. Refused, changing nothing, while a node of the run
        is running, or when a node it is at, waits in or has to undo does not exist there; its
        state is fitted to the target's model (the ``@graph.upgrade`` hook applies). A run
        stopped because its version was missing goes on at once; any other keeps its status
        (a failed run is then retried as usual)."""
        record = self.runtime.store.get_execution(execution_id)
        target = self._target(record, version)

        def change(r: ExecutionRecord) -> Change:
            _check(r, target)
            cursor = r.cursor.copy()
            cursor.graph_version = target.version
            state = dict(fit(target, r.state)[1])
            meta = {"from_version": r.cursor.graph_version, "to_version": target.version}
            if _stopped_for_version(r):
                return Change(state, cursor, cursor.settled(), None, meta=meta)
            return Change(state, cursor, r.status, r.error, meta=meta)

        record, commit = self.apply(
            execution_id, "upgrade", UPGRADABLE, change, by=by, reason=reason
        )
        logger.warning(
            "execution %s of %s moved from version %s to %s",
            execution_id,
            record.graph,
            record.cursor.graph_version,
            target.version,
        )
        if commit.status == S.RUNNING:
            self._dispatch_frontier(target, execution_id, commit)
        return target.version

    def _target(self, record: ExecutionRecord, version: str | None) -> GraphDefinition:
        self.runtime.graph(record.graph)
        target = self.runtime.graphs.at(record.graph, version)
        if target is None:
            here = [g.version for g in self.runtime.graphs.versions(record.graph)]
            raise CannotUpgrade(
                record.id,
                str(version),
                f"this process defines versions {', '.join(here)} of graph {record.graph!r}; "
                "run the command with code that defines the target version",
            )
        return target


def _check(record: ExecutionRecord, target: GraphDefinition) -> None:
    """Refuse a run with a node running, or at a node the target does not have."""
    cursor = record.cursor
    if record.status in (S.WAITING, S.PAUSED) and cursor.in_flight:
        running = ", ".join(name for name, _ in cursor.in_flight)
        raise CannotUpgrade(
            record.id,
            target.version,
            f"node(s) {running} are running; let them commit first (a paused run dispatches "
            "nothing new), then upgrade",
        )
    at = {name for name, _ in [*cursor.frontier, *cursor.held]}
    for wait in cursor.waits.values():
        at.add(wait.node)
        at.update(name for name, _ in wait.ready)
    at.update(cursor.joins)
    at.update(name for name, _, _ in cursor.undo)
    missing = sorted(at - set(target.nodes))
    if missing:
        raise CannotUpgrade(
            record.id,
            target.version,
            f"it is at, waits in or has to undo node(s) {', '.join(missing)}, which version "
            f"{target.version!r} does not have",
        )


def _stopped_for_version(record: ExecutionRecord) -> bool:
    return (
        record.status == S.NEEDS_INTERVENTION
        and record.error is not None
        and record.error.get("type") == MISSING
        and not record.cursor.undo
    )


def stop_missing(runtime: Runtime, execution_id: str, graph: str, version: str, node: str) -> bool:
    """No live worker serves the run's version: it stops as needs_intervention, with
    GraphVersionMissing (its version, the versions deployed, what differs) and the
    intervention signal. Returns False when there is nothing to stop: the run moved on
    (upgraded, cancelled, finished) since the message was sent."""
    error = _missing(runtime, execution_id, graph, version)

    def once(conflict: VersionConflict | None) -> ExecutionRecord | None:
        record = current_row(conflict, lambda: runtime.store.get_execution(execution_id))
        if record.status not in STOPPABLE or record.cursor.graph_version != version:
            return None
        commit = Base.of(record).commit(
            execution_id,
            Kind.INTERVENTION,
            node,
            record.version + 1,
            status=S.NEEDS_INTERVENTION,
            meta={"reason": str(error), "by": "versions"},
            error=error_record(MISSING, str(error), node),
        )
        runtime.store.save(commit)
        return record

    if until_committed(execution_id, once) is None:
        return False
    logger.error("execution %s needs intervention: %s", execution_id, error)
    runtime.announcer.announce_intervention(
        execution_id, graph, node, error_record(MISSING, str(error), node)
    )
    return True


def _missing(runtime: Runtime, execution_id: str, graph: str, version: str) -> GraphVersionMissing:
    """The error, with what the fleet and this process deploy, and how the newest differs
    from the run's version when a row of it is still known."""
    rows = runtime.fleet.versions(graph)
    here = runtime.graphs.versions(graph)
    deployed = {d.served.version for d in rows} | {g.version for g in here}
    theirs = next(
        (d.served.shape for d in runtime.fleet.known(graph) if d.served.version == version), None
    )
    said = None
    if theirs is not None and here:
        said = f"version {here[-1].version} differs: {difference(theirs, here[-1].shape())}"
    return GraphVersionMissing(execution_id, graph, version, deployed, said)
