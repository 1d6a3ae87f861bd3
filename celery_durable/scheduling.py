"""Schedules: graphs started by beat on a cron or an interval, once per tick, and what
operators do with them. A part of Durable, kept apart so that the composition root stays
about composing."""

from __future__ import annotations

import builtins
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from celery import Celery

from celery_durable.engine.actors import actor
from celery_durable.engine.runtime import Runtime
from celery_durable.engine.schedules import (
    FireReport,
    Schedule,
    ScheduleStatus,
    fire,
    statuses,
)
from celery_durable.engine.state import check_fields, dump, validate
from celery_durable.errors import InvalidSchedule, UnknownGraph, UnknownSchedule
from celery_durable.graphs.builder import Graph
from celery_durable.model.records import utcnow
from celery_durable.persistence.database import Database
from celery_durable.persistence.migrate import uses_database
from celery_durable.persistence.schedule_store import ScheduleRows
from celery_durable.policies.cron import Cron, Every, Timetable
from celery_durable.policies.ticks import LATE_AFTER
from celery_durable.tasks.beat import place_on_beat, register_tick_task

logger = logging.getLogger(__name__)


class Scheduling:
    """Durable's schedules; Durable sets the attributes."""

    app: Celery
    db: Database
    runtime: Runtime
    graphs: dict[str, Graph]

    @property
    def defined_schedules(self) -> dict[str, Schedule]:
        """The schedules defined on this app, by name (made at the first look)."""
        found: dict[str, Schedule] = self.__dict__.setdefault("_defined_schedules", {})
        return found

    def schedule(
        self,
        graph: Graph | str,
        cron: str | None = None,
        *,
        every: timedelta | None = None,
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        timezone: str | None = None,
        catch_up: bool = False,
        tags: Mapping[str, str] | None = None,
    ) -> Schedule:
        """Start a run of ``graph`` (its newest version) with ``kwargs`` on every tick of
        ``cron`` (5 fields, or 6 with seconds first) read in ``timezone`` (default UTC), or
        every ``every`` (counted from the epoch in UTC). Beat sends the task that starts
        them: run ``celery -A proj beat`` next to the workers, which must define this
        schedule too (the same module).

        Each tick starts one run, id ``<name>:<tick in UTC>`` (``nightly:2026-12-08T03:00:00Z``),
        however many beats send the task. Ticks missed while nothing could start them (beat
        or the workers down) are skipped, unless ``catch_up``. ``name`` defaults to the
        graph's. Each run is tagged ``schedule=<name>``, with ``tags`` besides. A bad cron,
        zone, name, input or tag raises here and registers nothing.
        """
        timetable = _timetable(cron, every, timezone)
        target = self._graph(graph)
        inputs = dict(kwargs or {})
        check_fields(target, inputs)
        dump(target.name, validate(target.name, target.state, inputs))
        made = Schedule(name or target.name, target.name, timetable, inputs, catch_up, tags or {})
        if made.name in self.defined_schedules:
            raise InvalidSchedule(
                f"name={made.name!r}", "another schedule has this name: give each its own name="
            )
        if not self.defined_schedules:
            register_tick_task(self.app, lambda: self.fire_schedules().as_dict())
        self.defined_schedules[made.name] = made
        place_on_beat(self.app, timetable.needs_seconds, LATE_AFTER.total_seconds())
        return made

    @uses_database(creates=True)
    def fire_schedules(self, now: datetime | None = None) -> FireReport:
        """Start the runs due now (or at ``now``) of the schedules defined here: what beat's
        task does; a test can call it with a clock of its own."""
        rows = ScheduleRows(self.db)
        return fire(self.runtime, rows, self.defined_schedules.values(), now or utcnow())

    @uses_database()
    def schedules(self, now: datetime | None = None) -> builtins.list[ScheduleStatus]:
        """Every schedule defined here or stored, with its next three ticks after now (or
        ``now``), whether it is paused and by whom, and its last run."""
        rows = ScheduleRows(self.db)
        return statuses(self.runtime, rows, self.defined_schedules, now or utcnow())

    @uses_database(creates=True)
    def pause_schedule(
        self, name: str, *, by: str | None = None, reason: str | None = None
    ) -> None:
        """Stop ``name`` starting runs, fleet-wide, until resumed; the ticks that come due
        meanwhile are passed over, not started later. Who did it and why are kept."""
        self._set_paused(name, True, by, reason)

    @uses_database(creates=True)
    def resume_schedule(
        self, name: str, *, by: str | None = None, reason: str | None = None
    ) -> None:
        """Let ``name`` start runs again, from its next tick."""
        self._set_paused(name, False, by, reason)

    def _set_paused(self, name: str, paused: bool, by: str | None, reason: str | None) -> None:
        rows = ScheduleRows(self.db)
        known = set(self.defined_schedules) | set(rows.read())
        if name not in known:
            raise UnknownSchedule(name, known)
        who = actor(by)
        logger.info(
            "schedule %s %s by %s%s", name, "paused" if paused else "resumed", who,
            f": {reason}" if reason else "",
        )  # fmt: skip
        rows.set_paused(name, paused, who[:200], reason)

    def _graph(self, graph: Graph | str) -> Graph:
        if not isinstance(graph, str):
            return graph
        try:
            return self.graphs[graph]
        except KeyError:
            raise UnknownGraph(graph, sorted(self.graphs)) from None


def _timetable(cron: str | None, every: timedelta | None, timezone: str | None) -> Timetable:
    if (cron is None) == (every is None):
        raise InvalidSchedule("schedule", "give either a cron string or every=timedelta(...)")
    if every is not None:
        if timezone is not None:
            raise InvalidSchedule(
                f"timezone={timezone!r}",
                "every= ticks are counted from the epoch in UTC, so a zone changes nothing; "
                "give a cron for wall-clock times",
            )
        return Every(every)
    assert cron is not None
    return Cron(cron, timezone or "UTC")
