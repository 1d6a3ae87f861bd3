"""One operation over a selection of runs: each run its own audited commit, a refusal reported
and not raised, a dry run changing nothing."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from celery_durable import Durable, ExecutionFailed, RetryPolicy, Status
from celery_durable.errors import InvalidInput
from celery_durable.testing import in_process_worker
from tests.waiting import wait_for


class Flaky(BaseModel):
    fixed: bool = False


def test_200_failed_runs_are_retried_in_bulk_each_audited(durable: Durable) -> None:
    g = durable.graph("flaky_bulk", state=Flaky)
    broken = {"yes": True}

    @g.node(retry=RetryPolicy.never())
    def call(state: Flaky) -> dict[str, bool]:
        if broken["yes"]:
            raise ConnectionError("down")
        return {"fixed": True}

    g.entry(call)
    other = durable.graph("other_bulk", state=Flaky)
    other.node(lambda s: None, name="fine")
    other.entry("fine")
    with in_process_worker(durable):
        runs = [g.delay() for _ in range(200)]
        done = other.delay()
        wait_for(lambda: durable.status_counts().get("failed") == 200, 60.0)
        done.wait(timeout=10)
        dry = durable.bulk("retry", status="failed", graph="flaky_bulk", dry_run=True)
        assert dry.dry_run and sorted(dry.done) == sorted(r.id for r in runs)
        assert durable.status_counts()["failed"] == 200  # nothing changed
        broken["yes"] = False
        report = durable.bulk("retry", status="failed", graph="flaky_bulk", by="ops", reason="up")
        assert len(report.done) == 200 and report.refused == {}
        wait_for(lambda: durable.status_counts().get("succeeded") == 201, 60.0)
    for run in runs[:5]:
        retried = [cp for cp in run.history() if cp.meta and cp.meta.get("op") == "retry"]
        assert [(cp.meta["by"], cp.meta["reason"]) for cp in retried] == [("ops", "up")]


def test_a_refusal_is_reported_and_the_others_go_on(durable: Durable) -> None:
    g = durable.graph("mixed_bulk", state=Flaky)

    @g.node(retry=RetryPolicy.never())
    def call(state: Flaky) -> None:
        if not state.fixed:
            raise ValueError("no")

    g.entry(call)
    with in_process_worker(durable):
        failed = g.delay()
        with pytest.raises(ExecutionFailed):
            failed.wait(timeout=10)
        ok = g.delay(fixed=True)
        ok.wait(timeout=10)
    report = durable.bulk("cancel", ids=[failed.id, ok.id], by="ops")
    assert report.done == [failed.id]
    assert "cancel does not apply to a run that is succeeded" in report.refused[ok.id]
    assert failed.status == Status.CANCELLED and ok.status == Status.SUCCEEDED
    assert report.as_dict()["selected"] == 2


def test_a_selection_must_say_what_it_selects(durable: Durable) -> None:
    with pytest.raises(InvalidInput, match="select runs"):
        durable.bulk("cancel")
    with pytest.raises(InvalidInput, match="no bulk operation 'explode'"):
        durable.bulk("explode", status="failed")
