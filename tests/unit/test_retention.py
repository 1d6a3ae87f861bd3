"""Retention and stuck detection: what is pruned, what never is, and what counts as stuck."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from pydantic import BaseModel
from sqlalchemy import func, select, update

from celery_durable import Durable, Status
from celery_durable.engine.recovery import sweep
from celery_durable.model.records import utcnow
from celery_durable.persistence.schema import checkpoints, executions, node_visits


class S(BaseModel):
    n: int = 0


def _age(durable: Durable, execution_id: str, days: float, status: Status) -> None:
    """Pretend a run ended (or last moved) ``days`` ago with ``status``."""
    when = utcnow() - timedelta(days=days)
    with durable.db.engine.begin() as conn:
        conn.execute(
            update(executions)
            .where(executions.c.id == execution_id)
            .values(status=str(status), finished_at=when, updated_at=when)
        )


def _count(durable: Durable, table: object) -> int:
    with durable.db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


@pytest.fixture
def graph(durable: Durable):  # type: ignore[no-untyped-def]
    g = durable.graph("kept", state=S)
    g.node(lambda s: None, name="a")
    g.entry("a")
    return g


def test_prune_keeps_what_retention_says_and_never_an_active_run(durable: Durable, graph) -> None:
    ages = {
        "ok-old": (8, Status.SUCCEEDED),
        "ok-new": (6, Status.SUCCEEDED),
        "failed-old": (31, Status.FAILED),
        "failed-mid": (8, Status.FAILED),
        "undone-old": (31, Status.COMPENSATED),
        "cancelled-old": (31, Status.CANCELLED),
        "running-old": (90, Status.RUNNING),
        "stuck-old": (90, Status.NEEDS_INTERVENTION),
        "paused-old": (90, Status.PAUSED),
    }
    for execution_id, (days, status) in ages.items():
        graph.apply_async(kwargs={}, execution_id=execution_id)
        durable.visits.record_failure(execution_id, "node", "a", 1, {"type": "X"}, None)
        _age(durable, execution_id, days, status)

    dry = durable.prune(dry_run=True)
    assert dry.total == 4 and len(durable.list(limit=100)) == 9  # a dry run deletes nothing

    report = durable.prune(batch=2)  # small batches: several transactions per status
    assert report.removed == {"succeeded": 1, "failed": 1, "compensated": 1, "cancelled": 1}
    left = {e.id for e in durable.list(limit=100)}
    assert left == {"ok-new", "failed-mid", "running-old", "stuck-old", "paused-old"}
    # No orphans: checkpoints and visits went with their executions.
    assert _count(durable, checkpoints) == 5 and _count(durable, node_visits) == 5

    assert durable.prune(older_than=timedelta(days=1)).total == 2  # one age for every status


def test_stuck_runs_are_listed_and_logged(
    durable: Durable, graph, caplog: pytest.LogCaptureFixture
) -> None:
    graph.apply_async(kwargs={}, execution_id="quiet")
    graph.apply_async(kwargs={}, execution_id="busy")
    _age(durable, "quiet", days=1, status=Status.RUNNING)
    assert [e.id for e in durable.stuck()] == ["quiet"]
    assert durable.stuck(threshold=timedelta(days=2)) == []
    with caplog.at_level(logging.WARNING, logger="celery_durable.engine.recovery"):
        report = sweep(durable.runtime)
    assert report.stuck == 1
    assert any("stuck executions" in r.message and "quiet" in r.message for r in caplog.records)
