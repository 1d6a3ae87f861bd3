"""The embedded default: the demo with no server, the threads pool, leases on long nodes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from celery import Celery
from pydantic import BaseModel

from celery_durable import Durable
from celery_durable.testing import in_process_worker

ROOT = Path(__file__).resolve().parents[2]


class Count(BaseModel):
    n: int = 0
    seen: list[str] = []


def test_demo_runs_with_no_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery_durable.cli",
            "demo",
            "--database-url",
            f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "6/6 nodes" not in out and "5/5 nodes (100%) [succeeded]" in out  # branch: 5 of 6
    assert "price (join)" in out and "─?▶ express|standard" in out
    assert "failed 1 time(s) (carrier API timed out) and was retried" in out
    assert "was compensated" in out and "compensation  reserve" in out
    assert "compensation  charge" in out  # the customer-cancel case undoes charge, then reserve
    assert "demo finished" in out


def test_threads_pool_runs_parallel_branches(app: Celery, durable: Durable) -> None:
    g = durable.graph("threads", state=Count)
    both_running = threading.Barrier(2, timeout=5)

    @g.node
    def start(s: Count) -> None:
        return None

    def branch(name: str):  # type: ignore[no-untyped-def]
        def node(s: Count) -> dict[str, object]:
            both_running.wait()  # only returns when the other branch runs at the same time
            return {name: 1} if name == "n" else {}

        node.__name__ = f"branch_{name}"
        return g.node(node)

    left, right = branch("n"), branch("x")
    g.entry(start)
    g.edge(start, [left, right])
    with in_process_worker(durable, pool="threads", concurrency=4):
        assert g.delay().wait(timeout=20).n == 1


def test_a_long_node_takes_a_lease_and_a_short_one_does_not(app: Celery, sqlite_url: str) -> None:
    durable = Durable(app, database_url=sqlite_url, lease_after=0.2, lease_ttl=3)
    durable.migrate()
    g = durable.graph("leases", state=Count)

    @g.node
    def slow(s: Count) -> dict[str, object]:
        time.sleep(1.5)
        return {"n": 1}

    @g.node
    def quick(s: Count) -> dict[str, object]:
        return {"n": 2}

    g.entry(slow)
    g.edge(slow, quick)
    with in_process_worker(durable):
        run = g.delay()
        assert run.wait(timeout=20).n == 2
    lease = durable.visits.get(run.id, "node", "slow", 1)
    assert lease is not None and lease.lease_token >= 1 and lease.lease_owner
    assert durable.visits.get(run.id, "node", "quick", 1) is None  # no row: no DB cost
    durable.db.dispose()
