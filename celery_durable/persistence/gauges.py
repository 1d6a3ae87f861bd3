"""What a metrics scrape reads from the database, as plain values: a few grouped queries,
so a scrape costs the same whatever the number of graphs or of their versions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select

from celery_durable.model.records import as_utc
from celery_durable.persistence import codec
from celery_durable.persistence.database import Database
from celery_durable.persistence.schema import executions
from celery_durable.status import ACTIVE, Status

ACTIVE_NAMES = sorted(str(status) for status in ACTIVE)


@dataclass(frozen=True, slots=True)
class ActiveRuns:
    """A graph's running or compensating executions, aged by their last commit: how long the
    quietest has been idle, and how many have been idle since before the stuck cutoff."""

    oldest_update: datetime
    stuck: int


@dataclass(frozen=True, slots=True)
class ExecutionGauges:
    """Executions by (graph, status) and by (graph, version, status), version None for runs
    started before runs were pinned to versions; the active runs of each graph that has any;
    waiting runs by (graph, what they wait for first: sleep, event, interrupt)."""

    counts: Mapping[tuple[str, Status], int]
    by_version: Mapping[tuple[str, str | None, Status], int]
    active: Mapping[str, ActiveRuns]
    waiting: Mapping[tuple[str, str], int]


def execution_gauges(db: Database, stuck_before: datetime) -> ExecutionGauges:
    # One grouped read for both counts: the index on (graph, graph_version, status) answers it.
    by_version = select(
        executions.c.graph, executions.c.graph_version, executions.c.status, func.count()
    ).group_by(executions.c.graph, executions.c.graph_version, executions.c.status)
    active = (
        select(
            executions.c.graph,
            func.min(executions.c.updated_at),
            func.sum(case((executions.c.updated_at < stuck_before, 1), else_=0)),
        )
        .where(executions.c.status.in_(ACTIVE_NAMES))
        .group_by(executions.c.graph)
    )
    waiting_runs = select(executions.c.graph, executions.c.cursor).where(
        executions.c.status == str(Status.WAITING)
    )
    with db.read() as conn:
        versions = {(g, v, Status(s)): int(n) for g, v, s, n in conn.execute(by_version)}
        runs = {
            g: ActiveRuns(oldest_update=as_utc(t), stuck=int(n))  # type: ignore[arg-type]
            for g, t, n in conn.execute(active)
        }
        waiting: Counter[tuple[str, str]] = Counter()
        for graph, cursor in conn.execute(waiting_runs):
            waits = list((codec.loads(cursor).get("waits") or {}).values())
            if waits:
                waiting[(graph, waits[0]["kind"])] += 1
    counts: Counter[tuple[str, Status]] = Counter()
    for (graph, _, status), n in versions.items():
        counts[(graph, status)] += n
    return ExecutionGauges(counts=dict(counts), by_version=versions, active=runs, waiting=waiting)


def count_by_status(db: Database) -> dict[str, int]:
    """Executions per status, over all graphs (the web view's counts)."""
    with db.read() as conn:
        rows = conn.execute(
            select(executions.c.status, func.count()).group_by(executions.c.status)
        ).all()
    return {status: int(n) for status, n in rows}
