"""Saga soak: 500 order sagas through two workers while one of them is SIGKILLed every ~3 s.

The ``order`` saga is reserve → charge → notify → ship; notify has no compensation. Each
order's fate is decided by a hash of its id: about 30% fail for good at one step (retried
first), some steps and some undos fail once and succeed on their retry. Every saga must end as
its plan says (succeeded, or compensated at the planned step); a compensated one has exactly one
compensation checkpoint per completed step that has an undo, newest first; a succeeded one has
none; and no (execution, kind, node, visit) may be committed twice. Run with ``-s`` for the
figures. DURABLE_SAGA_SOAK_RUNS, DURABLE_SAGA_SOAK_KILL_EVERY, DURABLE_SAGA_SOAK_DEADLINE and
DURABLE_SAGA_SOAK_WORK (seconds each step takes) change the defaults.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from celery_durable import Status
from tests.integration.app import ORDER_COMPENSATED, ORDER_RETRY, ORDER_STEPS, DurableApp
from tests.integration.harness import Killer, Workers, ledger_lines, settle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNS = int(os.environ.get("DURABLE_SAGA_SOAK_RUNS", "500"))
KILL_EVERY = float(os.environ.get("DURABLE_SAGA_SOAK_KILL_EVERY", "3.0"))
DEADLINE = float(os.environ.get("DURABLE_SAGA_SOAK_DEADLINE", "240"))
# Steps take this long, undos four times as long (they are few and run late, behind the
# backlog), so that kills land while both run, not only between them.
WORK = float(os.environ.get("DURABLE_SAGA_SOAK_WORK", "0.04"))
# A backlog of 500 sagas is not stale: don't let the sweep re-dispatch it needlessly.
SOAK_ENV = {"CELERY_DURABLE_STALE_AFTER": "20"}
FINAL = {str(Status.SUCCEEDED), str(Status.COMPENSATED)}

DUPLICATES = text("""
SELECT execution_id, kind, node, visit, count(*) FROM durable_checkpoints
 GROUP BY execution_id, kind, node, visit HAVING count(*) > 1
""")
CHECKPOINTS = text("""
SELECT execution_id, kind, node FROM durable_checkpoints
 WHERE kind IN ('node', 'failure', 'compensation') ORDER BY execution_id, seq
""")


def plan(order_id: str) -> dict[str, Any]:
    """The order's fate, from its id alone: ~30% fail for good at one step; ~15% of steps and
    of undos fail once, then succeed."""
    h = hashlib.sha256(order_id.encode()).digest()
    fail_at = ORDER_STEPS[h[1] % len(ORDER_STEPS)] if h[0] < 77 else ""
    return {
        "order_id": order_id,
        "fail_at": fail_at,
        "flaky": {step: 1 for i, step in enumerate(ORDER_STEPS) if h[2 + i] < 40},
        "compensation_flaky": {
            step: 1 for i, step in enumerate(ORDER_COMPENSATED) if h[8 + i] < 40
        },
        "step_sleep": dict.fromkeys(ORDER_STEPS, WORK),
        "compensation_sleep": dict.fromkeys(ORDER_COMPENSATED, 4 * WORK),
    }


def expected(order: dict[str, Any]) -> tuple[str, list[str], list[str]]:
    """Final status, node checkpoints, compensation checkpoints (in commit order)."""
    if not order["fail_at"]:
        return str(Status.SUCCEEDED), list(ORDER_STEPS), []
    completed = list(ORDER_STEPS[: ORDER_STEPS.index(order["fail_at"])])
    undone = [step for step in reversed(completed) if step in ORDER_COMPENSATED]
    return str(Status.COMPENSATED), completed, undone


def planned_starts(order: dict[str, Any]) -> tuple[int, int]:
    """Step and undo starts a run without crashes makes."""
    _, completed, undone = expected(order)
    steps = sum(1 + order["flaky"].get(step, 0) for step in completed)
    if order["fail_at"]:
        steps += ORDER_RETRY.max_attempts
    undos = sum(1 + order["compensation_flaky"].get(step, 0) for step in undone)
    return steps, undos


def wait_all_final(durable: DurableApp, killer: Killer, began: float) -> None:
    """Until every saga is succeeded or compensated; fail at once on any other ending."""
    store = durable.durable.store
    while True:
        counts = store.count_executions()
        if sum(counts.get(s, 0) for s in FINAL) == RUNS or killer.errors:
            return
        in_progress = {str(Status.RUNNING), str(Status.COMPENSATING)}
        wrong = {s: n for s, n in counts.items() if s not in FINAL | in_progress}
        assert not wrong, f"sagas ended badly: {counts}"
        assert time.monotonic() - began < DEADLINE, f"not done in {DEADLINE}s: {counts}"
        time.sleep(0.2)


def test_soak_500_sagas_with_kills(
    durable: DurableApp, workers: Workers, ledger_path: Path
) -> None:
    live = [workers.start(concurrency=2, extra_env=SOAK_ENV, wait=False) for _ in range(2)]
    for worker in live:
        worker.wait_ready()
    killer = Killer(workers, live, KILL_EVERY, SOAK_ENV)
    orders = {f"soak-o-{i:04d}": plan(f"o-{i:04d}") for i in range(RUNS)}

    began = time.monotonic()
    killer.start()
    try:
        for execution_id, order in orders.items():
            durable.durable.start(durable.order, order, execution_id=execution_id)
        wait_all_final(durable, killer, began)
        wall = time.monotonic() - began
    finally:
        killer.stop()
    assert not killer.errors, killer.errors
    assert killer.kills >= 2, "the soak must kill workers while sagas are in flight"

    with durable.durable.db.engine.connect() as conn:
        duplicates = conn.execute(DUPLICATES).all()
        rows = conn.execute(CHECKPOINTS).all()
    records = durable.durable.store.list_executions(limit=RUNS + 10)
    statuses = {r.id: (str(r.status), r.error) for r in records}
    assert duplicates == [], f"visits committed twice: {duplicates[:10]}"
    assert set(statuses) == set(orders)
    committed: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for execution_id, kind, node in rows:
        committed[execution_id][kind].append(node)

    wrong = []
    for execution_id, order in orders.items():
        status, nodes, undone = expected(order)
        got = committed[execution_id]
        seen = (statuses[execution_id][0], got["node"], got["compensation"], got["failure"])
        want = (status, nodes, undone, [order["fail_at"]] if order["fail_at"] else [])
        if seen != want:
            wrong.append((execution_id, order, seen, want))
        elif order["fail_at"]:
            error = statuses[execution_id][1]
            if not error or error.get("node") != order["fail_at"]:
                wrong.append((execution_id, order, "error", error))
    assert not wrong, f"{len(wrong)} sagas not as planned, e.g. {wrong[:5]}"

    settle(ledger_path, quiet=1.0, timeout=10.0)  # late duplicates count as re-runs too
    lines = ledger_lines(ledger_path)
    done = Counter((line[0], line[2]) for line in lines if line[1] == "comp-done")
    for execution_id, order in orders.items():
        for step in expected(order)[2]:
            assert done[(execution_id, step)] >= 1, f"{execution_id}: {step} never undone"
    events = Counter(line[1] for line in lines)
    planned = [planned_starts(order) for order in orders.values()]
    compensated = sum(1 for s, _ in statuses.values() if s == str(Status.COMPENSATED))
    print(
        f"\nsaga soak: {RUNS} sagas ({compensated} compensated, {RUNS - compensated} "
        f"succeeded) in {wall:.1f}s wall, {killer.kills} kills, "
        f"{events['step-start'] - sum(s for s, _ in planned)} step re-runs, "
        f"{events['comp-start'] - sum(u for _, u in planned)} compensation re-runs, "
        f"{len(rows)} node/failure/compensation checkpoints"
    )
