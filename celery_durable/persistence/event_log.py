"""Events sent to runs. Stored as they arrive, idempotent on (run, key), read back in the
order sent; which wait consumed which event is recorded by that wait's wake checkpoint."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.exc import IntegrityError

from celery_durable.model.records import EventRecord, as_utc, utcnow
from celery_durable.persistence import codec
from celery_durable.persistence.database import Database
from celery_durable.persistence.schema import events


class EventLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self,
        execution_id: str,
        name: str,
        payload_json: str,
        idempotency_key: str | None,
        *,
        sent_by: str | None = None,
        reason: str | None = None,
    ) -> tuple[EventRecord, bool]:
        """Store an event; with a key already used on this run, the stored one, not created."""
        now = utcnow()
        try:
            with self.db.engine.begin() as conn:
                event_id = conn.execute(
                    events.insert()
                    .values(
                        execution_id=execution_id,
                        name=name,
                        payload=payload_json,
                        idempotency_key=idempotency_key,
                        created_at=now,
                        sent_by=sent_by,
                        reason=reason,
                    )
                    .returning(events.c.id)
                ).scalar_one()
        except IntegrityError:
            found = self._by_key(execution_id, idempotency_key)
            if found is None:
                raise
            return found, False
        payload = codec.loads(payload_json)
        made = EventRecord(
            event_id, execution_id, name, payload, idempotency_key, now, sent_by, reason
        )
        return made, True

    def first(self, execution_id: str, name: str, skip: Collection[int]) -> EventRecord | None:
        """The oldest event of ``name`` not in ``skip`` (those consumed already)."""
        query = (
            select(events)
            .where(events.c.execution_id == execution_id, events.c.name == name)
            .order_by(events.c.id)
        )
        with self.db.read() as conn:
            for row in conn.execute(query):
                if row.id not in skip:
                    return _event(row)
        return None

    def _by_key(self, execution_id: str, key: str | None) -> EventRecord | None:
        if key is None:
            return None
        query = select(events).where(
            events.c.execution_id == execution_id, events.c.idempotency_key == key
        )
        with self.db.read() as conn:
            row = conn.execute(query).first()
        return None if row is None else _event(row)


def _event(row: Row[Any]) -> EventRecord:
    m = row._mapping
    return EventRecord(
        id=m["id"],
        execution_id=m["execution_id"],
        name=m["name"],
        payload=codec.loads(m["payload"]),
        idempotency_key=m["idempotency_key"],
        created_at=as_utc(m["created_at"]),  # type: ignore[arg-type]
        sent_by=m["sent_by"],
        reason=m["reason"],
    )
