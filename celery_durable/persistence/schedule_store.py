"""Reads and writes of the schedules' rows (schedule_rows.py): whether each is paused, and the
last tick dealt with. A row appears on the first write about its schedule; ``last_tick`` only
ever moves forward, so a late or repeated tick task cannot move it back."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, or_, select, update

from celery_durable.model.records import as_utc, utcnow
from celery_durable.persistence.database import Database
from celery_durable.persistence.schedule_rows import schedules


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """What the fleet shares about one schedule."""

    name: str
    paused: bool
    changed_by: str | None
    reason: str | None
    last_tick: datetime | None
    last_run_id: str | None
    updated_at: datetime


class ScheduleRows:
    def __init__(self, db: Database) -> None:
        self.db = db

    def read(self, names: Iterable[str] | None = None) -> dict[str, ScheduleRow]:
        """The rows of ``names`` that exist (None: every row), by name."""
        query = select(schedules).order_by(schedules.c.name)
        if names is not None:
            query = query.where(schedules.c.name.in_(list(names)))
        with self.db.read() as conn:
            return {r.name: _row(r._mapping) for r in conn.execute(query)}

    def advance(self, name: str, tick: datetime, run_id: str | None) -> bool:
        """Record ``tick`` as dealt with (``run_id``: the run it started; None: passed over)
        unless a later one is recorded already. Returns whether the row moved."""
        values: dict[str, Any] = {"last_tick": tick, "updated_at": utcnow()}
        if run_id is not None:
            values["last_run_id"] = run_id
        with self.db.engine.begin() as conn:
            self._ensure(conn, name)
            moved = conn.execute(
                update(schedules)
                .where(schedules.c.name == name)
                .where(or_(schedules.c.last_tick.is_(None), schedules.c.last_tick < tick))
                .values(**values)
            )
        return bool(moved.rowcount)

    def set_paused(self, name: str, paused: bool, by: str, reason: str | None) -> None:
        """An operator's pause or resume, with who did it and why."""
        with self.db.engine.begin() as conn:
            self._ensure(conn, name)
            conn.execute(
                update(schedules)
                .where(schedules.c.name == name)
                .values(paused=paused, changed_by=by, reason=reason, updated_at=utcnow())
            )

    def _ensure(self, conn: Connection, name: str) -> None:
        conn.execute(
            self.db.dialect.insert(schedules)
            .values(name=name, paused=False, updated_at=utcnow())
            .on_conflict_do_nothing(index_elements=["name"])
        )


def _row(m: Any) -> ScheduleRow:
    updated_at = as_utc(m["updated_at"])
    assert updated_at is not None
    return ScheduleRow(
        name=m["name"],
        paused=bool(m["paused"]),
        changed_by=m["changed_by"],
        reason=m["reason"],
        last_tick=as_utc(m["last_tick"]),
        last_run_id=m["last_run_id"],
        updated_at=updated_at,
    )
