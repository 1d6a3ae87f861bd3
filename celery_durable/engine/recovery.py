"""The recovery sweep: what heals a crash that redelivery alone cannot.

It dispatches retries whose due time has come (long delays wait in the database, not in the
broker), and re-dispatches running executions that made no progress for ``stale_after`` and
hold no live lease: a commit whose publish was lost, a message the broker dropped. Duplicate
dispatches are harmless: a node visit commits once. A run pinned to a version no live worker
serves is stopped as needs_intervention (engine/versions.py), never silently stranded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from celery_durable.engine import admission, quarantine, versions, wakeups
from celery_durable.engine.base import Base
from celery_durable.engine.runtime import Runtime
from celery_durable.errors import (
    CheckpointCorrupted,
    DuplicateCheckpoint,
    ExecutionNotFound,
    VersionConflict,
)
from celery_durable.model.records import (
    ExecutionRecord,
    Kind,
    VisitRecord,
    error_record,
    utcnow,
)
from celery_durable.saga import compensation
from celery_durable.status import LIVE, Status

logger = logging.getLogger(__name__)

# A due row whose handling failed (a key this worker lacks, a database hiccup) comes due
# again after this many seconds, here or on another worker.
GIVE_BACK_AFTER = 30.0


@dataclass(slots=True)
class RecoveryReport:
    retries: int = 0
    woken: int = 0
    redispatched: int = 0
    stranded: int = 0
    stuck: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def fire_timers(
    runtime: Runtime, now: datetime, limit: int = 500, report: RecoveryReport | None = None
) -> set[str]:
    """Dispatch the retries and wake the waits whose time has come; returns their runs. Each
    due row is claimed by one caller, however many workers fire timers at once."""
    report = report or RecoveryReport()
    fired: set[str] = set()
    admission.reap(runtime, now)
    for due in runtime.visits.claim_due(now, limit):
        # Each row on its own: one that fails is set aside or given back its due time, and
        # the rows claimed with it go on.
        try:
            if _fire(runtime, due, now, report):
                fired.add(due.execution_id)
        except CheckpointCorrupted as damage:
            quarantine.set_aside(runtime, damage)
        except Exception:
            logger.exception(
                "recovery: the timer of %s (%s %s, visit %d) failed; it is due again in %gs",
                *(due.execution_id, due.kind, due.node, due.visit, GIVE_BACK_AFTER),
            )
            again = now + timedelta(seconds=GIVE_BACK_AFTER)
            runtime.visits.schedule(due.execution_id, due.kind, due.node, due.visit, again)
    return fired


def _fire(runtime: Runtime, due: VisitRecord, now: datetime, report: RecoveryReport) -> bool:
    """One due row: a wait's timer, a held visit, or a retry; whether its run was sent on."""
    if due.kind == Kind.WAIT:
        node, _, slot = due.node.rpartition("@")
        key = f"{node}:{due.visit}:{slot}"
        if wakeups.wake(runtime, due.execution_id, key, wakeups.timer_result(runtime)):
            report.woken += 1
            return True
        _rearm(runtime, due, key)
        return False
    if due.kind == Kind.HOLD:
        return _release(runtime, due)
    if _retry(runtime, due, now):
        report.retries += 1
        return True
    return False


def sweep(runtime: Runtime, now: datetime | None = None, limit: int = 500) -> RecoveryReport:
    """One pass; safe to run from every worker at once."""
    now = now or utcnow()
    report = RecoveryReport()
    dispatched = fire_timers(runtime, now, limit, report)
    cutoff = now - timedelta(seconds=runtime.settings.stale_after)
    for stale in runtime.store.list_stale(cutoff, limit):
        if stale.id in dispatched:  # a retry sent just now is progress enough
            continue
        try:
            _heal(runtime, stale, now, report)
        except CheckpointCorrupted as damage:
            if quarantine.set_aside(runtime, damage):
                report.stranded += 1
        except Exception:
            logger.exception("recovery: could not heal execution %s; next sweep", stale.id)
    stuck_cutoff = now - timedelta(seconds=runtime.settings.stuck_after)
    stuck = runtime.store.list_stale(stuck_cutoff, limit, include_swept=True)
    report.stuck = len(stuck)
    _tell_stuck(runtime, stuck, now)
    if report.retries or report.woken or report.redispatched or report.stranded:
        logger.info("recovery sweep: %s", report.as_dict())
    return report


def _tell_stuck(runtime: Runtime, stuck: list[ExecutionRecord], now: datetime) -> None:
    """Log the runs stuck now; tell each (run, version) once, as long as it stays stuck."""
    if not stuck:
        runtime.stuck.clear()
        return
    logger.warning(
        "stuck executions (no commit for over %gs): %s%s",
        runtime.settings.stuck_after,
        ", ".join(r.id for r in stuck[:5]),
        " and more" if len(stuck) > 5 else "",
    )
    now_stuck = {(r.id, r.version) for r in stuck}
    for record in stuck:
        if (record.id, record.version) not in runtime.stuck:
            idle = (now - record.updated_at).total_seconds()
            runtime.hooks.execution_stuck(record.id, record.graph, idle)
    runtime.stuck.intersection_update(now_stuck)
    runtime.stuck.update(now_stuck)


def _rearm(runtime: Runtime, due: VisitRecord, key: str) -> None:
    """A wait on children that is still open: look at it again later."""
    record = _live(runtime, due.execution_id)
    wait = Base.of(record).cursor.waits.get(key) if record else None
    when = wakeups.due_at(runtime, wait) if wait is not None and wait.until is None else None
    if when is not None:
        runtime.visits.schedule(due.execution_id, due.kind, due.node, due.visit, when)


def _release(runtime: Runtime, due: VisitRecord) -> bool:
    """Send again a visit flow control held back, as the attempt it was, if still due."""
    found = _due_run(runtime, due)
    if found is None or not found[2].cursor.holds(due.node, due.visit):
        return False
    graph, record, base = found
    attempt = max(due.attempts, 1)
    runtime.dispatcher.dispatch(
        graph, due.node, due.visit, record.id, base, attempt=attempt, passed=due.waiting_for
    )
    # Sent again is progress: not stale, so the sweep does not send a second copy.
    runtime.store.touch(record, utcnow())
    return True


def _retry(runtime: Runtime, due: VisitRecord, now: datetime) -> bool:
    """Dispatch a retry whose time has come, if its visit is still due."""
    found = _due_run(runtime, due)
    if found is None:
        return False
    graph, record, base = found
    if due.kind == Kind.NODE:
        # A retry is the node in flight going on: it runs paused or compensating too
        # (its commit then waits, or joins the undo list).
        is_due = base.cursor.holds(due.node, due.visit)
    else:
        undo = compensation.due(base.status, base.cursor)
        is_due = undo is not None and undo[:2] == (due.node, due.visit)
    if not is_due:
        return False
    runtime.dispatcher.dispatch(
        graph,
        due.node,
        due.visit,
        record.id,
        base,
        attempt=due.attempts + 1,
        compensation=due.kind == Kind.COMPENSATION,
        recovered=True,
    )
    runtime.hooks.recovered(record.id, due.node, "due")
    # A dispatched retry is progress: not stale until stale_after from now.
    runtime.store.touch(record, now)
    return True


def _due_run(runtime: Runtime, due: VisitRecord) -> tuple[str, ExecutionRecord, Base] | None:
    """The live run of a due row, if this process knows its graph and, where it defines the
    run's version, its node. A version defined elsewhere is sent by name all the same: a
    worker that has it takes it (tasks/forwarding.py)."""
    record = _live(runtime, due.execution_id)
    if record is None or record.graph not in runtime.graphs:
        return None
    graph = runtime.graphs.at(record.graph, record.cursor.graph_version)
    if graph is not None and due.node not in graph.nodes:
        return None
    return record.graph, record, Base.of(record)


def _live(runtime: Runtime, execution_id: str) -> ExecutionRecord | None:
    """The run, verified, if it is live; a row that cannot be read raises to the caller,
    which sets it aside or gives its due row back."""
    try:
        record = runtime.store.get_execution(execution_id)
    except ExecutionNotFound:
        return None
    return record if record.status in LIVE else None


def _heal(runtime: Runtime, stale: ExecutionRecord, now: datetime, report: RecoveryReport) -> None:
    """Send again what a stale run has in flight. ``stale`` is the row as listed: its
    ``swept_at`` is what one sweeper claims; what is sent is the row read again, verified."""
    if stale.graph not in runtime.graphs:
        return  # Another deployment's graph: its own workers will sweep it.
    record = runtime.store.get_execution(stale.id)
    if record.version != stale.version:
        return  # It committed since it was listed: not stale.
    base = Base.of(record)
    version = base.cursor.graph_version
    graph = runtime.graphs.at(record.graph, version)
    if graph is None:
        assert version is not None
        # Its workers sweep it; with none live, it stops for an operator.
        if not runtime.fleet.serving(record.graph, version, None):
            node = next((name for name, _ in base.cursor.frontier), "")
            if versions.stop_missing(runtime, record.id, record.graph, version, node):
                report.stranded += 1
        return
    missing = sorted({name for name, _ in base.cursor.frontier if name not in graph.nodes})
    if missing:
        _strand(runtime, record, missing)
        report.stranded += 1
        return
    busy = runtime.visits.busy(record.id, now)
    if not runtime.store.touch(stale, now):
        return  # Another sweeper, or a commit, got there first.
    for name, visit in base.cursor.in_flight:
        if (Kind.NODE, name, visit) not in busy:
            found = runtime.visits.get(record.id, Kind.NODE, name, visit)
            attempt = (found.attempts if found else 0) + 1
            runtime.dispatcher.dispatch(
                graph.name, name, visit, record.id, base, attempt=attempt, recovered=True
            )
            runtime.hooks.recovered(record.id, name, "stale")
            report.redispatched += 1
    undo = compensation.due(base.status, base.cursor)
    if undo is not None and (Kind.COMPENSATION, undo[0], undo[1]) not in busy:
        runtime.dispatch_undo(graph.name, record.id, base, recovered=True)
        runtime.hooks.recovered(record.id, undo[0], "stale")
        report.redispatched += 1


def _strand(runtime: Runtime, record: ExecutionRecord, missing: list[str]) -> None:
    """A run started before runs were pinned to versions, whose next node the newest
    version does not have."""
    message = (
        f"this run's next node(s) {', '.join(missing)} no longer exist in graph "
        f"{record.graph!r} (its definition changed since the run started); deploy a "
        "definition that has them, or skip them by hand"
    )
    error = error_record("MissingNode", message, missing[0])
    commit = Base.of(record).commit(
        record.id,
        Kind.INTERVENTION,
        missing[0],
        record.version + 1,
        status=Status.NEEDS_INTERVENTION,
        meta={"reason": message, "by": "recovery"},
        error=error,
    )
    try:
        runtime.store.save(commit)
    except (VersionConflict, DuplicateCheckpoint):
        return
    logger.error("execution %s needs intervention: %s", record.id, message)
    runtime.announcer.announce_intervention(record.id, record.graph, missing[0], error)


class RecoveryLoop:
    """In a daemon thread of each worker: timers every ``timer_interval`` seconds (retries and
    waits come due on time), a full sweep on start and every ``sweep_interval`` after."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat: Callable[[], None] | None = None

    def start(self, beat: Callable[[], None] | None = None) -> None:
        """``beat``: called on every tick too (the worker's heartbeat, which keeps its own
        pace)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._beat = beat
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="durable-recovery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        settings = self.runtime.settings
        next_sweep = 0.0
        while not self._stop.is_set():
            full = time.monotonic() >= next_sweep
            try:
                if self._beat is not None:
                    self._beat()
                if full:
                    sweep(self.runtime)
                else:
                    fire_timers(self.runtime, utcnow())
            except Exception:
                # Timers run twice a second: log a failure at the pace of full sweeps.
                if full:
                    logger.exception("recovery sweep failed; trying again shortly")
                else:
                    logger.debug("firing timers failed", exc_info=True)
            if full:
                next_sweep = time.monotonic() + settings.sweep_interval
            self._stop.wait(min(settings.timer_interval, settings.sweep_interval))
