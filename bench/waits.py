"""Waiting holds no worker: N runs sleep durably on one worker process of concurrency 1.

Why this exists: a durable sleep must cost a row, not a worker slot, an unacked message or a
broker ETA. If waiting held the slot, N runs sleeping S seconds on concurrency 1 would take
N x S seconds; they take S seconds plus the time to run and wake them. Two phases:

- burst: ``--runs`` runs started at once: when the last one finished, after the last start.
  The worker is saturated (each run is two node executions and a wake), so the lag here is
  mostly the queue in front of the woken nodes;
- steady: ``--steady-runs`` runs started at ``--rate`` per second, a load the worker keeps up
  with: the lag here is the timer mechanism's own.

For both: the wake-up lag, from a sleep's due time to its node running again (the node
records time.time() when it resumes), p50, p95 and max, with the default settings (timers
fired every ``timer_interval``, 0.5 s, by each worker).

    .venv/bin/python bench/waits.py [--runs 2000] [--steady-runs 200] [--rate 20] [--sleep 5]

BENCH_ENGINE_PG (admin URL) and BENCH_WAITS_BROKER point it elsewhere. It creates a throwaway
database and queue and removes both at exit. It asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from engine import ADMIN_DSN, ROOT, delete_queues, pct, server_version, stop

from celery_durable.testing import throwaway_database


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--steady-runs", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--sleep", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=1)
    return parser.parse_args()


def finished(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM durable_executions WHERE status = 'succeeded'"
        ).fetchone()
    return int(row[0]) if row else 0


def lags(dsn: str, ids: list[str]) -> list[float]:
    """Per run: when its node ran again minus when its sleep was due."""
    query = """
        SELECT (e.state::json ->> 'woke')::float - (c.output::json ->> 'until')::float
          FROM durable_executions e
          JOIN durable_checkpoints c ON c.execution_id = e.id AND c.kind = 'wait'
         WHERE e.status = 'succeeded' AND e.id = ANY(%s)
    """
    with psycopg.connect(dsn) as conn:
        return [float(row[0]) for row in conn.execute(query, (ids,))]


def phase(name: str, dsn: str, nap: Any, runs: int, rate: float | None, sleep: float) -> None:
    """Start ``runs`` (all at once, or ``rate`` per second), wait for all, print the figures."""
    before = finished(dsn)
    ids, t0 = [], time.time()
    for i in range(runs):
        if rate:
            time.sleep(max(0.0, t0 + i / rate - time.time()))
        ids.append(nap.delay(sleep=sleep).id)
    last_start = time.time()
    deadline = last_start + sleep + 600
    while (done := finished(dsn) - before) < runs and time.time() < deadline:
        time.sleep(0.2)
    all_done = time.time()
    found = lags(dsn, ids)
    how = f"{rate:g}/s" if rate else "at once"
    print(f"{name}: {runs} runs started {how} in {last_start - t0:.1f} s, sleeping {sleep:g} s")
    took = all_done - last_start
    print(f"  finished          {done} of {runs}, the last {took:.1f} s after the last start")
    if found:
        print(
            f"  wake-up lag       p50 {pct(found, 50):.3f} s, p95 {pct(found, 95):.3f} s, "
            f"max {max(found):.3f} s"
        )


def main() -> None:
    args = parse_args()
    queue = f"bench-waits-{uuid.uuid4().hex[:8]}"
    with throwaway_database(ADMIN_DSN, f"bench_waits_{uuid.uuid4().hex[:8]}") as url:
        env = {**os.environ, "CELERY_DURABLE_DATABASE_URL": url, "BENCH_WAITS_QUEUE": queue}
        env["PYTHONPATH"] = str(ROOT)
        os.environ.update({"CELERY_DURABLE_DATABASE_URL": url, "BENCH_WAITS_QUEUE": queue})
        sys.path.insert(0, str(ROOT))
        from bench import waits_app

        waits_app.durable.migrate()
        dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
        log = Path(tempfile.mkdtemp(prefix="bench-waits-")) / "worker.log"
        cmd = [
            sys.executable, "-m", "celery", "-A", "bench.waits_app:app", "worker",
            "-P", "prefork", "-c", str(args.concurrency), "-Q", queue,
            "--prefetch-multiplier", "1", "-l", "WARNING", "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        settings = waits_app.durable.settings
        print(
            f"Environment: {os.cpu_count()} cores, one worker -P prefork -c "
            f"{args.concurrency}; {server_version()}; timer_interval "
            f"{settings.timer_interval} s, sweep_interval {settings.sweep_interval} s"
        )
        held = args.runs * args.sleep / args.concurrency
        print(f"(holding a worker slot per sleep, the burst would take {held:.0f} s)")
        try:
            phase("burst", dsn, waits_app.nap, args.runs, None, args.sleep)
            phase("steady", dsn, waits_app.nap, args.steady_runs, args.rate, args.sleep)
        finally:
            stop(proc)
            delete_queues(waits_app.app, [queue])
            waits_app.durable.db.dispose()


if __name__ == "__main__":
    main()
