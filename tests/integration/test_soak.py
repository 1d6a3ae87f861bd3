"""Soak: 1,000 five-node runs through two workers while one of them is SIGKILLed every ~1 s.

Run twice: with nodes handed on inline (the default) and with a message per node. Every run
must succeed with exactly five node checkpoints (five distinct nodes) and count 5,
and no (execution, kind, node, visit) may be committed twice. Run with ``-s`` for the figures.
DURABLE_SOAK_RUNS, DURABLE_SOAK_KILL_EVERY and DURABLE_SOAK_DEADLINE change the defaults.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from celery_durable import Status
from tests.integration.app import CHAIN_NODES, DurableApp
from tests.integration.harness import HAND_ON, Killer, Workers, ledger_lines, settle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNS = int(os.environ.get("DURABLE_SOAK_RUNS", "1000"))
KILL_EVERY = float(os.environ.get("DURABLE_SOAK_KILL_EVERY", "1.0"))
DEADLINE = float(os.environ.get("DURABLE_SOAK_DEADLINE", "240"))
# A backlog of 1,000 runs is not stale: don't let the sweep re-dispatch it needlessly.
SOAK_ENV = {"CELERY_DURABLE_STALE_AFTER": "20"}

DUPLICATES = text("""
SELECT execution_id, kind, node, visit, count(*) FROM durable_checkpoints
 GROUP BY execution_id, kind, node, visit HAVING count(*) > 1
""")
PER_RUN = text("""
SELECT execution_id, count(*), count(DISTINCT node) FROM durable_checkpoints
 WHERE kind = 'node' GROUP BY execution_id
""")


@pytest.mark.parametrize("hand_on", sorted(HAND_ON))
def test_soak_1000_runs_with_kills(
    durable: DurableApp, workers: Workers, ledger_path: Path, hand_on: str
) -> None:
    env = {**SOAK_ENV, **HAND_ON[hand_on]}
    live = [workers.start(concurrency=2, extra_env=env, wait=False) for _ in range(2)]
    for worker in live:
        worker.wait_ready()
    killer = Killer(workers, live, KILL_EVERY, env)
    store = durable.durable.store

    began = time.monotonic()
    killer.start()
    try:
        ids = [durable.durable.start(durable.chain, {}).id for _ in range(RUNS)]
        while True:
            counts = store.count_executions()
            if counts.get(str(Status.SUCCEEDED), 0) == RUNS or killer.errors:
                break
            assert (
                counts.get(str(Status.RUNNING), 0) + counts.get(str(Status.SUCCEEDED), 0) == RUNS
            ), f"runs ended badly: {counts}"
            assert time.monotonic() - began < DEADLINE, f"not done in {DEADLINE}s: {counts}"
            time.sleep(0.2)
        wall = time.monotonic() - began
    finally:
        killer.stop()
    assert not killer.errors, killer.errors
    assert killer.kills >= 2, "the soak must kill workers while runs are in flight"

    with durable.durable.db.engine.connect() as conn:
        duplicates = conn.execute(DUPLICATES).all()
        per_run = {row[0]: (row[1], row[2]) for row in conn.execute(PER_RUN)}
    assert duplicates == [], f"visits committed twice: {duplicates[:10]}"
    assert set(per_run) == set(ids)
    bad = {eid: n for eid, n in per_run.items() if n != (5, 5)}
    assert not bad, f"runs without exactly 5 distinct node checkpoints: {list(bad.items())[:10]}"
    records = store.list_executions(limit=RUNS + 10)
    assert len(records) == RUNS
    wrong = [
        r.id for r in records if r.state["count"] != 5 or r.state["trail"] != list(CHAIN_NODES)
    ]
    assert not wrong, f"wrong final state: {wrong[:10]}"

    settle(ledger_path, quiet=1.0, timeout=10.0)  # late duplicates count as re-runs too
    starts = sum(1 for line in ledger_lines(ledger_path) if line[3] == "start")
    print(
        f"\nsoak ({hand_on}): {RUNS} runs ({RUNS * 5} nodes) in {wall:.1f}s wall, "
        f"{RUNS * 5 / wall:.0f} nodes/s, {killer.kills} kills, "
        f"{starts - RUNS * 5} node re-runs"
    )
