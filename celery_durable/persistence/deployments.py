"""What each worker of the fleet serves, in the database every worker shares: a row per
(worker, graph, version) with that version's structure and the routing keys the worker
consumes, kept alive by the worker's heartbeat. A row not seen for a while is a dead worker's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from celery_durable.model.records import as_utc
from celery_durable.persistence.database import Database
from celery_durable.persistence.schema import deployments, executions
from celery_durable.status import Status


@dataclass(frozen=True, slots=True)
class Served:
    """One version of one graph as a worker serves it."""

    graph: str
    version: str
    fingerprint: str
    shape: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Deployment:
    """A row: ``worker`` serves ``served``, consuming ``routing_keys``, last seen ``seen_at``."""

    worker: str
    served: Served
    routing_keys: tuple[str, ...]
    started_at: datetime
    seen_at: datetime


class Deployments:
    def __init__(self, db: Database) -> None:
        self.db = db

    def announce(
        self, worker: str, served: list[Served], routing_keys: list[str], now: datetime
    ) -> None:
        """``worker`` serves exactly ``served`` from now on (a restart replaces its rows)."""
        rows = [
            {
                "worker": worker,
                "graph": s.graph,
                "version": s.version,
                "fingerprint": s.fingerprint,
                "shape": json.dumps(s.shape, sort_keys=True),
                "routing_keys": json.dumps(sorted(routing_keys)),
                "started_at": now,
                "seen_at": now,
            }
            for s in served
        ]
        with self.db.engine.begin() as conn:
            conn.execute(delete(deployments).where(deployments.c.worker == worker))
            if rows:
                conn.execute(insert(deployments), rows)

    def beat(self, worker: str, now: datetime) -> int:
        """Mark ``worker`` alive; returns its rows (0: they were removed, announce again)."""
        with self.db.engine.begin() as conn:
            done = conn.execute(
                update(deployments).where(deployments.c.worker == worker).values(seen_at=now)
            )
        return done.rowcount

    def leave(self, worker: str, gone_since: datetime) -> None:
        """``worker`` stopped: its rows no longer count as live, and are kept (until
        forgotten) for what they say of versions no live worker serves any more."""
        with self.db.engine.begin() as conn:
            conn.execute(
                update(deployments).where(deployments.c.worker == worker).values(seen_at=gone_since)
            )

    def forget(self, before: datetime) -> int:
        """Remove the rows of workers not seen since ``before``: gone for good."""
        with self.db.engine.begin() as conn:
            done = conn.execute(delete(deployments).where(deployments.c.seen_at < before))
        return done.rowcount

    def live(self, since: datetime, graph: str | None = None) -> list[Deployment]:
        """The rows of workers seen since ``since`` (of ``graph``, if given)."""
        query = select(deployments).where(deployments.c.seen_at >= since)
        if graph is not None:
            query = query.where(deployments.c.graph == graph)
        query = query.order_by(deployments.c.graph, deployments.c.version, deployments.c.worker)
        with self.db.read() as conn:
            return [_deployment(row._mapping) for row in conn.execute(query)]

    def runs_by_version(self) -> dict[tuple[str, str | None, Status], int]:
        """Executions by (graph, version, status); version None: started before runs were
        pinned."""
        query = select(
            executions.c.graph, executions.c.graph_version, executions.c.status, func.count()
        ).group_by(executions.c.graph, executions.c.graph_version, executions.c.status)
        with self.db.read() as conn:
            return {(g, v, Status(s)): int(n) for g, v, s, n in conn.execute(query)}


def _deployment(m: Any) -> Deployment:
    return Deployment(
        worker=m["worker"],
        served=Served(m["graph"], m["version"], m["fingerprint"], json.loads(m["shape"])),
        routing_keys=tuple(json.loads(m["routing_keys"])),
        started_at=as_utc(m["started_at"]),  # type: ignore[arg-type]
        seen_at=as_utc(m["seen_at"]),  # type: ignore[arg-type]
    )
