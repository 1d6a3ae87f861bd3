"""Which of a schedule's ticks to start now: a pure decision, from its timetable, the last
tick dealt with, the clock, and whether it catches up or is paused."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from celery_durable.policies.cron import Timetable, latest_at_or_before

# A tick whose run could not start within this long (beat or every worker down, a queue
# backed up) is missed: skipped, or started late when the schedule catches up.
LATE_AFTER = timedelta(minutes=5)
# At most this many missed ticks are started by one tick task; the next goes on from there.
CATCH_UP_BATCH = 100


@dataclass(frozen=True, slots=True)
class Due:
    """What one tick task does for one schedule: the ticks to start, oldest first, and the
    tick the row moves to (None: it stays). ``skipped``: missed ticks were passed over."""

    start: tuple[datetime, ...] = ()
    through: datetime | None = None
    skipped: bool = False


def due(
    timetable: Timetable,
    last_tick: datetime | None,
    now: datetime,
    *,
    catch_up: bool = False,
    paused: bool = False,
) -> Due:
    """Which ticks to start at ``now``, after ``last_tick`` (None: none dealt with yet).

    The latest tick at or before now starts if it is less than LATE_AFTER old; earlier ones
    were missed: skipped, or, with ``catch_up`` and a last tick to go on from, started too
    (CATCH_UP_BATCH at a time). A paused schedule starts nothing and passes its ticks over,
    so that resuming it does not start what came due while it was paused.
    """
    if catch_up and last_tick is not None and not paused:
        owed: list[datetime] = []
        tick = last_tick
        while len(owed) < CATCH_UP_BATCH and (tick := timetable.next_after(tick)) <= now:
            owed.append(tick)
        return Due(tuple(owed), owed[-1] if owed else None)
    latest = latest_at_or_before(timetable, now)
    if latest is None or (last_tick is not None and latest <= last_tick):
        return Due()
    if paused:
        return Due(through=latest)
    if last_tick is None:
        # First seen: what came before it was never its to start.
        return Due((latest,), latest) if now - latest < LATE_AFTER else Due()
    if now - latest >= LATE_AFTER:
        return Due(through=latest, skipped=True)
    return Due((latest,), latest, skipped=timetable.next_after(last_tick) < latest)
