"""Schedules: a graph started on every tick of a timetable, at most once per tick.

Each tick's run has the id ``<name>:<tick in UTC>``, and starting a run with an id that has
one is that run (start.py): that is what makes a tick start once however many tick tasks
see it (two beats, a beat restarted, a message delivered twice). The schedule's row keeps
the last tick dealt with, only ever moved forward, so a tick passed is never looked at again.

``fire`` is what beat's task runs: for each schedule, the ticks due by now are decided
(policies/ticks.py) and started, oldest first.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from celery_durable.engine.runtime import Runtime
from celery_durable.engine.start import MAX_ID_LENGTH, StartOptions, start_run
from celery_durable.errors import ExecutionNotFound, InvalidSchedule, StartNotDispatched
from celery_durable.model.tags import checked
from celery_durable.persistence.schedule_store import ScheduleRow, ScheduleRows
from celery_durable.policies.cron import Timetable, ticks
from celery_durable.policies.ticks import due
from celery_durable.status import Status

logger = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# The id's tail: ":" and a tick as ``2026-12-08T03:00:00Z``.
TICK_LENGTH = 21


@dataclass(frozen=True, slots=True)
class Schedule:
    """A graph started on each tick of ``timetable`` with ``kwargs`` as its input.

    ``catch_up``: ticks missed while nothing could start them are started late, oldest first;
    without it they are skipped and only the tick due now starts. Each run is tagged with
    ``schedule=<name>`` and ``tags``, so ``ls --tag schedule=<name>`` lists them.
    """

    name: str
    graph: str
    timetable: Timetable
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    catch_up: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and NAME.fullmatch(self.name)):
            raise InvalidSchedule(
                f"name={self.name!r}",
                "give letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
        if len(self.name) > MAX_ID_LENGTH - TICK_LENGTH:
            raise InvalidSchedule(
                f"name={self.name[:40]!r}...", f"at most {MAX_ID_LENGTH - TICK_LENGTH} characters"
            )
        object.__setattr__(self, "tags", checked({**self.tags, "schedule": self.name}))

    def run_id(self, tick: datetime) -> str:
        return run_id(self.name, tick)

    def next_ticks(self, after: datetime, count: int = 3) -> list[datetime]:
        return ticks(self.timetable, after, count)


@dataclass
class FireReport:
    """What one tick task did: the ids of the runs it started (or found started), the
    schedules whose missed ticks it skipped, and those that failed (logged)."""

    started: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {"started": self.started, "skipped": self.skipped, "failed": self.failed}


@dataclass(frozen=True, slots=True)
class ScheduleStatus:
    """A schedule as operators see it: its definition (None: a row no code here defines),
    its row (None: no tick dealt with yet), its next ticks and its last run's status (None:
    no run, or pruned)."""

    name: str
    schedule: Schedule | None
    row: ScheduleRow | None
    next_ticks: tuple[datetime, ...]
    last_run_status: Status | None

    @property
    def paused(self) -> bool:
        return self.row is not None and self.row.paused


def run_id(name: str, tick: datetime) -> str:
    """The id of the run a schedule starts for ``tick``: ``nightly:2026-12-08T03:00:00Z``."""
    return f"{name}:{tick.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def fire(
    runtime: Runtime, rows: ScheduleRows, schedules: Iterable[Schedule], now: datetime
) -> FireReport:
    """Start what is due at ``now`` for each schedule. A schedule that fails (its graph not
    defined here, the database refusing) is logged and left for the next tick task; the
    others go on."""
    schedules = list(schedules)
    stored = rows.read([s.name for s in schedules])
    report = FireReport()
    for schedule in schedules:
        row = stored.get(schedule.name)
        try:
            _fire_one(runtime, rows, schedule, row, now, report)
        except Exception:
            logger.exception("schedule %s: its due ticks were not started", schedule.name)
            report.failed.append(schedule.name)
    return report


def _fire_one(
    runtime: Runtime,
    rows: ScheduleRows,
    schedule: Schedule,
    row: ScheduleRow | None,
    now: datetime,
    report: FireReport,
) -> None:
    last = row.last_tick if row else None
    paused = row is not None and row.paused
    plan = due(schedule.timetable, last, now, catch_up=schedule.catch_up, paused=paused)
    if plan.skipped:
        logger.warning(
            "schedule %s: ticks after %s missed (nothing ran them in time), skipped",
            schedule.name,
            last.isoformat() if last else "-",
        )
        report.skipped.append(schedule.name)
    if not plan.start and plan.through is not None:
        rows.advance(schedule.name, plan.through, None)
    if not plan.start:
        return
    definition = runtime.graph(schedule.graph)
    runtime.flow.check([definition])
    for tick in plan.start:
        execution_id = schedule.run_id(tick)
        try:
            start = StartOptions(execution_id=execution_id, tags=schedule.tags)
            start_run(runtime, definition, dict(schedule.kwargs), start)
        except StartNotDispatched as exc:
            # Stored: the recovery sweep sends its first node once the broker is back.
            logger.warning("schedule %s: %s", schedule.name, exc)
        rows.advance(schedule.name, tick, execution_id)
        report.started.append(execution_id)


def statuses(
    runtime: Runtime, rows: ScheduleRows, schedules: Mapping[str, Schedule], now: datetime
) -> list[ScheduleStatus]:
    """Every schedule defined here and every row, by name."""
    stored = rows.read()
    found = []
    for name in sorted(set(schedules) | set(stored)):
        schedule, row = schedules.get(name), stored.get(name)
        upcoming = tuple(schedule.next_ticks(now)) if schedule else ()
        found.append(ScheduleStatus(name, schedule, row, upcoming, _status(runtime, row)))
    return found


def _status(runtime: Runtime, row: ScheduleRow | None) -> Status | None:
    if row is None or row.last_run_id is None:
        return None
    try:
        return runtime.store.get_execution(row.last_run_id, verify=False).status
    except ExecutionNotFound:
        return None
