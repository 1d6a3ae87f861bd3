"""The recovery sweep: what heals a crash that redelivery alone cannot.

It dispatches retries whose due time has come (long delays wait in the database, not in the
broker), and re-dispatches running executions that made no progress for ``stale_after`` and
hold no live lease: a commit whose publish was lost, a message the broker dropped. Duplicate
dispatches are harmless: a node visit commits once. Runs of an older graph definition whose
next node no longer exists are stopped as needs_intervention, never silently stranded.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from celery_durable.errors import DuplicateCheckpoint, VersionConflict
from celery_durable.persistence.records import Commit, ExecutionRecord, utcnow
from celery_durable.saga.compensation import COMPENSATION, INTERVENTION, proceed
from celery_durable.saga.coordinator import Cursor
from celery_durable.status import Status
from celery_durable.tasks.attempt import Base
from celery_durable.tasks.node import NODE

if TYPE_CHECKING:
    from celery_durable.durable import Durable

logger = logging.getLogger(__name__)
ACTIVE = frozenset({Status.RUNNING, Status.COMPENSATING})
RETRYABLE = ACTIVE | {Status.PAUSED}


@dataclass(slots=True)
class RecoveryReport:
    retries: int = 0
    redispatched: int = 0
    stranded: int = 0
    stuck: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def sweep(durable: Durable, now: datetime | None = None, limit: int = 500) -> RecoveryReport:
    """One pass; safe to run from every worker at once."""
    now = now or utcnow()
    report = RecoveryReport()
    dispatched: set[str] = set()
    for due in durable.visits.claim_due(now, limit):
        record = _active(durable, due.execution_id, RETRYABLE)
        graph = durable.graphs.get(record.graph) if record else None
        if record is None or graph is None or due.node not in graph.nodes:
            continue
        base = Base.of(record)
        if due.kind == NODE:
            # A retry is the node in flight going on: it runs paused or compensating too
            # (its commit then waits, or joins the undo list).
            is_due = base.cursor.holds(due.node, due.visit)
        else:
            undo = base.cursor.undo
            is_due = bool(undo) and undo[0][:2] == (due.node, due.visit)
        if is_due:
            durable.dispatch(
                graph,
                due.node,
                due.visit,
                record.id,
                base,
                attempt=due.attempts + 1,
                compensation=due.kind == COMPENSATION,
                recovered=True,
            )
            durable.hooks.recovered(record.id, due.node, "due")
            report.retries += 1
            dispatched.add(record.id)
            # A dispatched retry is progress: not stale until stale_after from now.
            durable.store.touch(record, now)
    cutoff = now - timedelta(seconds=durable.settings.stale_after)
    for record in durable.store.list_stale(cutoff, limit):
        if record.id not in dispatched:  # a retry sent just now is progress enough
            _heal(durable, record, now, report)
    stuck_cutoff = now - timedelta(seconds=durable.settings.stuck_after)
    stuck = durable.store.list_stale(stuck_cutoff, 6, include_swept=True)
    report.stuck = len(stuck)
    if stuck:
        logger.warning(
            "stuck executions (no commit for over %gs): %s%s",
            durable.settings.stuck_after,
            ", ".join(r.id for r in stuck[:5]),
            " and more" if len(stuck) > 5 else "",
        )
    if report.retries or report.redispatched or report.stranded:
        logger.info("recovery sweep: %s", report.as_dict())
    return report


def _active(
    durable: Durable, execution_id: str, statuses: frozenset[Status]
) -> ExecutionRecord | None:
    try:
        record = durable.store.get_execution(execution_id)
    except Exception:
        logger.exception("recovery: cannot load execution %s", execution_id)
        return None
    return record if record.status in statuses else None


def _heal(durable: Durable, record: ExecutionRecord, now: datetime, report: RecoveryReport) -> None:
    graph = durable.graphs.get(record.graph)
    if graph is None:
        return  # Another deployment's graph: its own workers will sweep it.
    cursor = Cursor.from_json(record.cursor)
    missing = sorted({name for name, _ in cursor.frontier if name not in graph.nodes})
    if missing:
        _strand(durable, record, missing)
        report.stranded += 1
        return
    busy = durable.visits.busy(record.id, now)
    if not durable.store.touch(record, now):
        return  # Another sweeper, or a commit, got there first.
    base = Base.of(record)
    for name, visit in cursor.in_flight:
        if (NODE, name, visit) not in busy:
            found = durable.visits.get(record.id, NODE, name, visit)
            attempt = (found.attempts if found else 0) + 1
            durable.dispatch(graph, name, visit, record.id, base, attempt=attempt, recovered=True)
            durable.hooks.recovered(record.id, name, "stale")
            report.redispatched += 1
    if record.status == Status.COMPENSATING and not cursor.frontier and cursor.undo:
        name, visit, _ = cursor.undo[0]
        if (COMPENSATION, name, visit) not in busy:
            proceed(durable, graph, record.id, base, recovered=True)
            durable.hooks.recovered(record.id, name, "stale")
            report.redispatched += 1


def _strand(durable: Durable, record: ExecutionRecord, missing: list[str]) -> None:
    error = {
        "type": "MissingNode",
        "message": f"this run's next node(s) {', '.join(missing)} no longer exist in graph "
        f"{record.graph!r} (its definition changed since the run started); deploy a "
        "definition that has them, or skip them by hand",
        "node": missing[0],
    }
    try:
        durable.store.save(
            Commit(
                execution_id=record.id,
                expected_version=record.version,
                kind=INTERVENTION,
                node=missing[0],
                visit=record.version + 1,
                state=record.state,
                cursor=record.cursor,
                status=Status.NEEDS_INTERVENTION,
                meta={"reason": error["message"], "by": "recovery"},
                error=error,
            )
        )
    except (VersionConflict, DuplicateCheckpoint):
        return
    logger.error("execution %s needs intervention: %s", record.id, error["message"])


class RecoveryLoop:
    """Sweeps on worker start and every ``sweep_interval`` seconds after, in a daemon thread."""

    def __init__(self, durable: Durable) -> None:
        self.durable = durable
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="durable-recovery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while True:
            try:
                sweep(self.durable)
            except Exception:
                logger.exception(
                    "recovery sweep failed; trying again in %ss",
                    self.durable.settings.sweep_interval,
                )
            if self._stop.wait(self.durable.settings.sweep_interval):
                return
