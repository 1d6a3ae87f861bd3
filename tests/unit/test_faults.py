"""Crash injection as users get it: armed in-process with crash_at, or by environment for
worker processes, by node, count and probability."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from celery_durable import Context, Durable, Status, faults
from celery_durable.faults import crash_at
from celery_durable.testing import assert_committed_once, fast_forward, waiting_for


class Nap(BaseModel):
    slept: bool = False


def test_a_crash_right_after_a_wake_is_healed_by_the_sweep(durable: Durable, worker) -> None:
    g = durable.graph("napper", state=Nap)

    @g.node
    def nap(state: Nap, ctx: Context) -> dict[str, bool]:
        ctx.sleep(600)
        return {"slept": True}

    g.entry(nap)
    with worker():
        run = g.delay()
        waiting_for(run, "sleep")
        with crash_at("after_wake", "nap") as crash:
            fast_forward(durable, 600)  # the wake commits, its dispatch never happens
        assert crash.crashes == 1
        assert run.status == Status.RUNNING and run.waiting_on is None
        assert fast_forward(durable, durable.settings.stale_after).redispatched == 1
        assert run.wait(timeout=5).slept
    assert_committed_once(run, ["nap"])


def test_environment_faults_count_across_processes_and_can_be_random(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(faults.TIMES_ENV, "2")
    monkeypatch.setenv(faults.LEDGER_ENV, str(tmp_path / "crashes"))
    assert [faults._this_time() for _ in range(3)] == [True, True, False]
    monkeypatch.delenv(faults.TIMES_ENV)
    monkeypatch.setenv(faults.PROBABILITY_ENV, "0")
    assert not faults._this_time()


def test_an_unknown_fault_point_is_refused() -> None:
    with pytest.raises(ValueError, match="before_commit"), crash_at("before_comit"):
        pass
