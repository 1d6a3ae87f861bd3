"""Concurrency slots shared by the fleet: at most ``max`` holders per (scope, key), the rest
queued first come first served. A freed slot is handed to the first in line inside the same
transaction, so that no newcomer overtakes it, and the caller sends the visit that got it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Table,
    and_,
    delete,
    exists,
    func,
    select,
    update,
)

from celery_durable.model.records import Kind, utcnow
from celery_durable.persistence.database import Database
from celery_durable.persistence.schema import executions, node_visits, slot_queue, slots
from celery_durable.status import FINISHED


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds or waits for a slot: a node visit, or (node "", visit 0) a whole run."""

    scope: str
    key: str
    execution_id: str
    node: str = ""
    visit: int = 0
    attempt: int = 1

    def same(self, other: Holder) -> bool:
        return _slot_key(self) == _slot_key(other)


class SlotTable:
    def __init__(self, db: Database) -> None:
        self.db = db

    def take(self, holder: Holder, limit: int, ttl: float | None) -> bool:
        """A slot for ``holder`` if one is free and nobody waits before it; else it queues.
        Taking a slot it already holds (a redelivery) renews it."""
        now = utcnow()
        expires = None if ttl is None else now + timedelta(seconds=ttl)
        with self.db.engine.begin() as conn:
            self.db.dialect.lock_name(conn, f"{holder.scope}\x1f{holder.key}")
            mine = _is(slots, holder)
            if conn.execute(update(slots).where(mine).values(expires_at=expires)).rowcount:
                return True
            held = conn.execute(
                select(func.count()).select_from(slots).where(_of(slots, holder))
            ).scalar_one()
            first = conn.execute(
                select(slot_queue).where(_of(slot_queue, holder)).order_by(slot_queue.c.id).limit(1)
            ).first()
            if held < limit and (first is None or _holder(first).same(holder)):
                conn.execute(slots.insert().values(**_slot(holder, expires)))
                conn.execute(delete(slot_queue).where(_is(slot_queue, holder)))
                return True
            conn.execute(
                self.db.dialect.insert(slot_queue)
                .values(**_slot_key(holder), attempt=holder.attempt, enqueued_at=now)
                .on_conflict_do_nothing()
            )
            return False

    def leave(self, holder: Holder, limit: int, ttl: float | None) -> list[Holder]:
        """Give ``holder``'s slot up; returns the waiters it went to, now holding slots."""
        with self.db.engine.begin() as conn:
            self.db.dialect.lock_name(conn, f"{holder.scope}\x1f{holder.key}")
            conn.execute(delete(slots).where(_is(slots, holder)))
            conn.execute(delete(slot_queue).where(_is(slot_queue, holder)))
            return self._hand_on(conn, holder, limit, ttl)

    def reap(self, now: datetime, limits: dict[str, tuple[int, float | None]]) -> list[Holder]:
        """Free the slots of dead holders: a visit whose slot and lease both expired (its
        worker died), a run that ended. Returns the waiters the slots went to."""
        lease_alive = exists().where(
            node_visits.c.execution_id == slots.c.execution_id,
            node_visits.c.kind == str(Kind.NODE),
            node_visits.c.node == slots.c.node,
            node_visits.c.visit == slots.c.visit,
            node_visits.c.lease_expires_at > now,
        )
        run_ended = exists().where(
            executions.c.id == slots.c.execution_id,
            executions.c.status.in_([str(s) for s in FINISHED]),
        )
        dead = (
            and_(slots.c.expires_at < now, ~lease_alive)
            | run_ended
            | ~exists().where(executions.c.id == slots.c.execution_id)
        )
        with self.db.read() as conn:
            rows = conn.execute(select(slots).where(dead).limit(100)).all()
        granted: list[Holder] = []
        for row in rows:
            holder = _holder(row)
            if holder.scope in limits:
                granted += self.leave(holder, *limits[holder.scope])
        return granted

    def holders(self, execution_id: str) -> tuple[list[Holder], list[Holder]]:
        """This run's slots, and its places in line."""
        with self.db.read() as conn:
            held = conn.execute(select(slots).where(slots.c.execution_id == execution_id)).all()
            queued = conn.execute(
                select(slot_queue).where(slot_queue.c.execution_id == execution_id)
            ).all()
        return [_holder(r) for r in held], [_holder(r) for r in queued]

    def _hand_on(
        self, conn: Connection, freed: Holder, limit: int, ttl: float | None
    ) -> list[Holder]:
        held = conn.execute(
            select(func.count()).select_from(slots).where(_of(slots, freed))
        ).scalar_one()
        if held >= limit:
            return []
        waiting = conn.execute(
            select(slot_queue)
            .where(_of(slot_queue, freed))
            .order_by(slot_queue.c.id)
            .limit(limit - held)
        ).all()
        expires = None if ttl is None else utcnow() + timedelta(seconds=ttl)
        granted = [_holder(row) for row in waiting]
        for holder in granted:
            conn.execute(slots.insert().values(**_slot(holder, expires)))
            conn.execute(delete(slot_queue).where(_is(slot_queue, holder)))
        return granted


def _of(table: Table, holder: Holder) -> ColumnElement[bool]:
    return and_(table.c.scope == holder.scope, table.c.key == holder.key)


def _is(table: Table, holder: Holder) -> ColumnElement[bool]:
    c = table.c
    return and_(
        c.scope == holder.scope,
        c.key == holder.key,
        c.execution_id == holder.execution_id,
        c.node == holder.node,
        c.visit == holder.visit,
    )


def _slot_key(holder: Holder) -> dict[str, object]:
    return {
        "scope": holder.scope,
        "key": holder.key,
        "execution_id": holder.execution_id,
        "node": holder.node,
        "visit": holder.visit,
    }


def _slot(holder: Holder, expires: datetime | None) -> dict[str, object]:
    return {**_slot_key(holder), "expires_at": expires}


def _holder(row: Row[Any]) -> Holder:
    m = row._mapping
    attempt = m.get("attempt", 1)
    return Holder(m["scope"], m["key"], m["execution_id"], m["node"], m["visit"], attempt)
