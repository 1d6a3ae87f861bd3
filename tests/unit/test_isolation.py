"""One bad row never harms another run: timers and the recovery sweep handle each row on its
own; a row that fails its checksum is set aside (needs_intervention, named, signalled) and
nothing is decided from it."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import text

from celery_durable import Context, Durable, RetryPolicy, Status
from celery_durable.engine.recovery import GIVE_BACK_AFTER, fire_timers
from celery_durable.errors import EncryptionKeyMissing
from celery_durable.model.records import Kind, utcnow
from celery_durable.signals import intervention_required
from celery_durable.testing import embedded_app, fast_forward, in_process_worker
from tests.waiting import wait_for


class Nap(BaseModel):
    n: int = 0


def _tamper(durable: Durable, execution_id: str) -> None:
    """The chaos: plain SQL behind the engine's back."""
    with durable.db.engine.begin() as conn:
        conn.execute(
            text("UPDATE durable_executions SET state = :s WHERE id = :id"),
            {"s": '{"n": 99}', "id": execution_id},
        )


def _heard() -> tuple[list[dict[str, Any]], Any]:
    heard: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        heard.append(kwargs)

    intervention_required.connect(receiver)
    return heard, receiver


def test_one_corrupted_row_among_200_sleeping_runs_is_set_aside_and_199_wake(
    durable: Durable, caplog: pytest.LogCaptureFixture
) -> None:
    g = durable.graph("nap", state=Nap)

    @g.node
    def sleep(state: Nap, ctx: Context) -> dict[str, int]:
        ctx.sleep(60)
        return {"n": state.n + 1}

    g.entry(sleep)
    with in_process_worker(durable):
        runs = [g.delay() for _ in range(200)]
        wait_for(lambda: durable.status_counts().get("waiting") == 200, 30.0)
    damaged = runs[57]
    _tamper(durable, damaged.id)
    heard, receiver = _heard()
    try:
        with in_process_worker(durable), caplog.at_level(logging.ERROR):
            report = fast_forward(durable, 61)
            wait_for(lambda: durable.status_counts().get("succeeded") == 199, 30.0)
    finally:
        intervention_required.disconnect(receiver)
    assert report.woken == 199
    record = durable.store.get_execution(damaged.id, verify=False)
    assert record.status == Status.NEEDS_INTERVENTION
    assert record.error is not None and record.error["type"] == "CheckpointCorrupted"
    assert damaged.id in record.error["message"]
    assert [h["execution_id"] for h in heard] == [damaged.id]
    assert any(
        r.levelno == logging.ERROR
        and damaged.id in r.getMessage()
        and "set aside" in r.getMessage()
        for r in caplog.records
    )
    assert durable.status_counts() == {"succeeded": 199, "needs_intervention": 1}


def test_the_sweep_never_dispatches_a_state_that_fails_its_checksum(sqlite_url: str) -> None:
    fast = Durable(embedded_app("stale-sweep"), database_url=sqlite_url, stale_after=0.05)
    fast.migrate()
    g = fast.graph("stale", state=Nap)
    g.node(lambda s: {"n": s.n + 1}, name="a")
    g.entry("a")
    run = g.delay()  # no worker: its entry node's message waits, and the run goes stale
    _tamper(fast, run.id)
    time.sleep(0.1)  # past stale_after
    heard, receiver = _heard()
    try:
        report = fast.recover()
    finally:
        intervention_required.disconnect(receiver)
    assert report.redispatched == 0 and report.stranded == 1
    assert fast.store.get_execution(run.id, verify=False).status == Status.NEEDS_INTERVENTION
    assert [h["execution_id"] for h in heard] == [run.id]
    fast.db.dispose()


def test_a_timer_this_worker_cannot_open_is_given_back_not_lost(
    durable: Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = durable.graph("locked", state=Nap)

    @g.node(retry=RetryPolicy(max_attempts=2, initial_delay=30, jitter=False))
    def flaky(state: Nap) -> dict[str, int]:
        if state.n == 0:
            raise ConnectionError("later")
        return {}

    g.entry(flaky)
    with in_process_worker(durable):
        run = g.delay()
        wait_for(lambda: bool(durable.visits.get(run.id, Kind.NODE, "flaky", 1)), 5.0)
        wait_for(
            lambda: durable.visits.get(run.id, Kind.NODE, "flaky", 1).due_at is not None,  # type: ignore[union-attr]
            5.0,
        )

    def locked(*args: Any, **kwargs: Any) -> Any:
        raise EncryptionKeyMissing("k1", ["k2"])

    monkeypatch.setattr(durable.store, "get_execution", locked)
    later = utcnow()
    fire_timers(durable.runtime, later + timedelta(seconds=31))
    monkeypatch.undo()
    due = durable.visits.get(run.id, Kind.NODE, "flaky", 1)
    assert due is not None and due.due_at is not None
    assert due.due_at > later + timedelta(seconds=31 + GIVE_BACK_AFTER - 1)
    assert run.status == Status.RUNNING
