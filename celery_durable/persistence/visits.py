"""Node visits off the happy path: failed attempts, redeliveries, leases, due retries and
the timers of waits.

A node that commits on its first delivery never touches this table. Everything here is an
upsert keyed like the checkpoint it precedes, (execution, kind, node, visit).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, and_, delete, or_, select, update

from celery_durable.model.records import AttemptRecord, Kind, VisitRecord, as_utc, utcnow
from celery_durable.persistence import codec
from celery_durable.persistence.database import Database
from celery_durable.persistence.schema import attempts, node_visits


class VisitLedger:
    """Attempt counts that survive crashes, the redelivery cap, leases with fencing tokens."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, execution_id: str, kind: str, node: str, visit: int) -> VisitRecord | None:
        with self.db.read() as conn:
            row = conn.execute(
                select(node_visits).where(_key(execution_id, kind, node, visit))
            ).first()
        return None if row is None else _visit(row)

    def record_failure(
        self,
        execution_id: str,
        kind: str,
        node: str,
        visit: int,
        error: dict[str, Any],
        due_at: datetime | None,
    ) -> int:
        """Count a failed attempt (and when to retry it); returns attempts so far."""
        row = self._upsert(
            (execution_id, kind, node, visit),
            # A failed attempt gives up its lease; bumping the token fences it out for good,
            # and keeps every later token above every earlier one.
            increments={"attempts": 1, "lease_token": 1},
            values={
                "last_error": codec.dumps(error),
                "due_at": due_at,
                "lease_owner": None,
                "lease_expires_at": None,
            },
        )
        with self.db.engine.begin() as conn:
            conn.execute(
                self.db.dialect.insert(attempts)
                .values(
                    execution_id=execution_id,
                    kind=str(kind),
                    node=node,
                    visit=visit,
                    attempt=int(row.attempts),
                    error=codec.dumps(error),
                    failed_at=utcnow(),
                )
                .on_conflict_do_nothing()
            )
        return int(row.attempts)

    def failures(self, execution_id: str) -> list[AttemptRecord]:
        """Every failed attempt of the run, in the order they failed."""
        query = (
            select(attempts)
            .where(attempts.c.execution_id == execution_id)
            .order_by(attempts.c.failed_at, attempts.c.attempt)
        )
        with self.db.read() as conn:
            return [
                AttemptRecord(
                    execution_id=m["execution_id"],
                    kind=Kind(m["kind"]),
                    node=m["node"],
                    visit=m["visit"],
                    attempt=m["attempt"],
                    error=codec.loads(m["error"]),
                    failed_at=as_utc(m["failed_at"]),  # type: ignore[arg-type]
                )
                for m in (row._mapping for row in conn.execute(query))
            ]

    def schedule(
        self, execution_id: str, kind: str, node: str, visit: int, due_at: datetime
    ) -> None:
        """A timer: the recovery sweep claims the row at ``due_at`` (a sleep ends, an event
        wait times out). Written before the wait commits, so a wait never lacks its timer."""
        self._upsert((execution_id, kind, node, visit), increments={}, values={"due_at": due_at})

    def hold(
        self, execution_id: str, node: str, visit: int, attempt: int, due_at: datetime, by: str
    ) -> None:
        """Flow control holds a node visit back until ``due_at``: the sweep sends attempt
        ``attempt`` again then. Its own row, so the visit's attempt count stays as it was."""
        self._upsert(
            (execution_id, Kind.HOLD, node, visit),
            increments={},
            values={"due_at": due_at, "attempts": attempt, "waiting_for": by},
        )

    def held(self, execution_id: str) -> dict[tuple[str, int], str]:
        """(node, visit) of this execution held back by flow control, and by what."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(node_visits).where(
                    node_visits.c.execution_id == execution_id,
                    node_visits.c.kind == str(Kind.HOLD),
                    node_visits.c.due_at.is_not(None),
                )
            ).all()
        return {(row.node, row.visit): row.waiting_for for row in rows}

    def record_redelivery(self, execution_id: str, kind: str, node: str, visit: int) -> VisitRecord:
        """Count one more redelivery of this visit's message; returns the visit as it stands."""
        return _visit(
            self._upsert((execution_id, kind, node, visit), increments={"redeliveries": 1})
        )

    def take_lease(
        self, execution_id: str, kind: str, node: str, visit: int, owner: str, ttl: float
    ) -> int:
        """Lease the visit for ``ttl`` seconds; the returned fencing token beats every older one."""
        row = self._upsert(
            (execution_id, kind, node, visit),
            increments={"lease_token": 1},
            values={"lease_owner": owner, "lease_expires_at": utcnow() + timedelta(seconds=ttl)},
        )
        return int(row.lease_token)

    def renew_lease(
        self, execution_id: str, kind: str, node: str, visit: int, token: int, ttl: float
    ) -> bool:
        """Extend a lease still held with ``token``; False once a newer attempt took it."""
        with self.db.engine.begin() as conn:
            result = conn.execute(
                update(node_visits)
                .where(_key(execution_id, kind, node, visit), node_visits.c.lease_token == token)
                .values(lease_expires_at=utcnow() + timedelta(seconds=ttl), updated_at=utcnow())
            )
        return result.rowcount == 1

    def drop_lease(self, execution_id: str, kind: str, node: str, visit: int) -> None:
        """Give a lease up now (its process is about to end); the token bump fences it out."""
        with self.db.engine.begin() as conn:
            conn.execute(
                update(node_visits)
                .where(_key(execution_id, kind, node, visit))
                .values(
                    lease_owner=None,
                    lease_expires_at=None,
                    lease_token=node_visits.c.lease_token + 1,
                    updated_at=utcnow(),
                )
            )

    def reset(self, execution_id: str, kind: str, node: str, visit: int) -> None:
        """Forget a visit's attempts and redeliveries: an operator's retry starts it afresh."""
        with self.db.engine.begin() as conn:
            conn.execute(delete(node_visits).where(_key(execution_id, kind, node, visit)))

    def clear_due(self, execution_id: str, kind: str, node: str, visit: int) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(
                update(node_visits)
                .where(_key(execution_id, kind, node, visit))
                .values(due_at=None, updated_at=utcnow())
            )

    def claim_due(self, now: datetime, limit: int = 100) -> list[VisitRecord]:
        """Take the retries whose time has come; each is handed to exactly one sweeper."""
        with self.db.engine.begin() as conn:
            rows = conn.execute(
                select(node_visits)
                .where(node_visits.c.due_at <= now)
                .order_by(node_visits.c.due_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                m = row._mapping
                conn.execute(
                    update(node_visits)
                    .where(_key(m["execution_id"], m["kind"], m["node"], m["visit"]))
                    .values(due_at=None, updated_at=now)
                )
        return [_visit(row) for row in rows]

    def busy(self, execution_id: str, now: datetime) -> set[tuple[str, str, int]]:
        """(kind, node, visit) of this execution held by a live lease or waiting to retry."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(node_visits).where(
                    node_visits.c.execution_id == execution_id,
                    or_(
                        node_visits.c.lease_expires_at > now,
                        node_visits.c.due_at.is_not(None),
                    ),
                )
            ).all()
        # A visit held back by flow control is as busy as one waiting to retry.
        return {
            (Kind.NODE if row.kind == Kind.HOLD else row.kind, row.node, row.visit) for row in rows
        }

    def _upsert(
        self,
        key: tuple[str, str, str, int],
        increments: dict[str, int],
        values: dict[str, Any] | None = None,
    ) -> Row[Any]:
        """Insert the visit's row, or add ``increments`` to it; set ``values`` either way."""
        execution_id, kind, node, visit = key
        values = values or {}
        now = utcnow()
        row = {
            "execution_id": execution_id,
            "kind": str(kind),
            "node": node,
            "visit": visit,
            "attempts": 0,
            "redeliveries": 0,
            "lease_token": 0,
            "updated_at": now,
            **increments,
            **values,
        }
        on_conflict = {
            **{name: node_visits.c[name] + amount for name, amount in increments.items()},
            **values,
            "updated_at": now,
        }
        statement = (
            self.db.dialect.insert(node_visits)
            .values(row)
            .on_conflict_do_update(
                index_elements=["execution_id", "kind", "node", "visit"], set_=on_conflict
            )
            .returning(*node_visits.c)
        )
        with self.db.engine.begin() as conn:
            return conn.execute(statement).one()


def _key(execution_id: str, kind: str, node: str, visit: int) -> Any:
    return and_(
        node_visits.c.execution_id == execution_id,
        node_visits.c.kind == str(kind),
        node_visits.c.node == node,
        node_visits.c.visit == visit,
    )


def _visit(row: Row[Any]) -> VisitRecord:
    m = row._mapping
    stored = {name: m[name] for name in _AS_STORED}
    return VisitRecord(
        **stored,
        kind=Kind(m["kind"]),
        lease_expires_at=as_utc(m["lease_expires_at"]),
        due_at=as_utc(m["due_at"]),
        last_error=codec.loads(m["last_error"]),
    )


# The columns a VisitRecord takes as they are stored.
_AS_STORED = (
    "execution_id",
    "node",
    "visit",
    "attempts",
    "redeliveries",
    "lease_token",
    "lease_owner",
    "waiting_for",
)
