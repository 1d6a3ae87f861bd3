"""The schedules' tick task, ``durable.schedules``, and its entry on beat's schedule.

Beat sends the task at the start of every minute, or every second once a schedule ticks
within minutes; the task works out from the clock and the database which ticks are due, so
beat's own bookkeeping (its schedule file, a restart, a second beat) decides nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.schedules import crontab

from celery_durable.constants import SCHEDULES_TASK


def register_tick_task(app: Celery, fire: Callable[[], dict[str, list[str]]]) -> None:
    """``durable.schedules`` as a task of ``app``: ``fire`` starts what is due. Call once."""

    # A plain function: beat's apply_async() checks the call signature Celery derives from it.
    def tick_task() -> dict[str, list[str]]:
        return fire()

    app.task(name=SCHEDULES_TASK, shared=False, ignore_result=True)(tick_task)


def place_on_beat(app: Celery, every_second: bool, expires: float) -> None:
    """Put the tick task on beat's schedule, every minute or, for a schedule that ticks
    within minutes, every second; a copy not run within ``expires`` seconds is dropped (a
    later one does its work). An entry of that name the app set itself is kept."""
    entries = app.conf.beat_schedule
    current = entries.get(SCHEDULES_TASK)
    if current is None or (every_second and current == _entry(False, expires)):
        entries[SCHEDULES_TASK] = _entry(every_second, expires)


def _entry(every_second: bool, expires: float) -> dict[str, Any]:
    return {
        "task": SCHEDULES_TASK,
        "schedule": 1.0 if every_second else crontab(),
        "options": {"expires": expires},
    }
