"""Retries are visible: every failed attempt is kept with its error, beside the history."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from celery_durable import Durable, RetryPolicy
from celery_durable.testing import in_process_worker


class Counter(BaseModel):
    n: int = 0


def test_every_failed_attempt_is_kept_with_its_error(durable: Durable) -> None:
    g = durable.graph("kept_attempts", state=Counter)
    calls: list[int] = []

    @g.node(retry=RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=False))
    def shaky(state: Counter) -> dict[str, int]:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError(f"try {len(calls)} refused")
        return {"n": len(calls)}

    g.entry(shaky)
    with in_process_worker(durable):
        run = g.delay()
        run.wait(timeout=10)
    kept = run.attempts()
    assert [(a.node, a.visit, a.attempt) for a in kept] == [("shaky", 1, 1), ("shaky", 1, 2)]
    assert [a.error["message"] for a in kept] == ["try 1 refused", "try 2 refused"]
    assert kept[0].failed_at <= kept[1].failed_at
    assert durable.prune(older_than=timedelta(0)).total == 1
    assert run.attempts() == []  # pruned with its run
