"""Where flow control keeps what the fleet shares: a row per circuit breaker and per rate
limit, each read and changed under one row lock so that every worker sees one history."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update

from celery_durable.model.records import BreakerRow, BreakerState, as_utc, utcnow
from celery_durable.persistence.database import Database
from celery_durable.persistence.schema import breakers, rate_limits


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """A breaker as operators see it."""

    name: str
    row: BreakerRow
    rejections: int
    changed_by: str | None
    updated_at: datetime | None


class LockedBreaker:
    """A breaker's row, read under its lock in an open transaction."""

    def __init__(self, conn: Connection, name: str, row: BreakerRow) -> None:
        self._conn, self.name, self.row = conn, name, row

    def write(self, changed: BreakerRow | None) -> None:
        """Store the row as decided (None: unchanged)."""
        if changed is None:
            return
        self._conn.execute(
            update(breakers)
            .where(breakers.c.name == self.name)
            .values(**_breaker_values(changed), changed_by=None, updated_at=utcnow())
        )


class FlowStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @contextmanager
    def locked_breaker(self, name: str) -> Iterator[LockedBreaker]:
        """The breaker's row under its lock, for the caller to decide on: what it writes
        (``LockedBreaker.write``) commits with the lock's release, when the block ends."""
        with self.db.engine.begin() as conn:
            yield LockedBreaker(conn, name, self._locked_breaker(conn, name))

    def reject(self, name: str) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(
                update(breakers)
                .where(breakers.c.name == name)
                .values(rejections=breakers.c.rejections + 1)
            )

    def set_breaker(self, name: str, row: BreakerRow, by: str) -> None:
        """An operator's open or close."""
        with self.db.engine.begin() as conn:
            self._locked_breaker(conn, name)
            conn.execute(
                update(breakers)
                .where(breakers.c.name == name)
                .values(**_breaker_values(row), changed_by=by, updated_at=utcnow())
            )

    def breakers(self) -> list[BreakerStatus]:
        with self.db.read() as conn:
            rows = conn.execute(select(breakers).order_by(breakers.c.name)).all()
        return [
            BreakerStatus(
                r.name,
                _breaker_row(r._mapping),
                r.rejections,
                r.changed_by,
                as_utc(r.updated_at),
            )
            for r in rows
        ]

    def reserve(self, name: str, interval: timedelta, now: datetime) -> datetime:
        """This call's turn under rate limit ``name``, taken for good: the next caller's
        comes ``interval`` after it (a generic cell rate algorithm with no burst)."""
        with self.db.engine.begin() as conn:
            conn.execute(
                self.db.dialect.insert(rate_limits)
                .values(name=name, next_free_at=now)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            stored = conn.execute(
                select(rate_limits.c.next_free_at)
                .where(rate_limits.c.name == name)
                .with_for_update()
            ).scalar_one()
            turn = max(now, as_utc(stored) or now)
            conn.execute(
                update(rate_limits)
                .where(rate_limits.c.name == name)
                .values(next_free_at=turn + interval)
            )
        return turn

    def _locked_breaker(self, conn: Connection, name: str) -> BreakerRow:
        conn.execute(
            self.db.dialect.insert(breakers)
            .values(
                name=name,
                state=str(BreakerState.CLOSED),
                failures=0,
                rejections=0,
                updated_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["name"])
        )
        row = conn.execute(select(breakers).where(breakers.c.name == name).with_for_update()).one()
        return _breaker_row(row._mapping)


def _breaker_row(m: Any) -> BreakerRow:
    return BreakerRow(
        BreakerState(m["state"]),
        m["failures"],
        as_utc(m["window_started_at"]),
        as_utc(m["opened_at"]),
        as_utc(m["probe_until"]),
    )


def _breaker_values(row: BreakerRow) -> dict[str, Any]:
    return {
        "state": str(row.state),
        "failures": row.failures,
        "window_started_at": row.window_started_at,
        "opened_at": row.opened_at,
        "probe_until": row.probe_until,
    }
