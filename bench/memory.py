"""Does a worker's memory hold still? RSS of every process of one durable worker after 1,000
and after 10,000 runs of bench/engine_app.py's 5-node graph.

How to run, from the repository root (PostgreSQL, RabbitMQ on loopback)::

    .venv/bin/python bench/memory.py [--runs 10000] [--checkpoint 1000] [--concurrency 2]
                                     [--inline-nodes N]

A throwaway database, a queue of its own, one worker ``-P prefork -c N`` (bench/engine.py's,
with ``--max-tasks-per-child`` unset: the pool processes live through all the runs). Runs go
in batches of 200 submitted at once; after ``--checkpoint`` runs and after ``--runs`` runs,
the RSS of the worker's main process and of each pool process is read from /proc. A leak of
a few hundred bytes per run shows as megabytes between the two readings.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.engine import ADMIN_DSN, BROKER, Side, delete_queues, worker  # noqa: E402
from celery_durable.testing import throwaway_database  # noqa: E402

BATCH = 200


def rss_kib(pgid: int) -> dict[int, int]:
    """VmRSS of every process in the worker's process group, by pid."""
    found: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
            if int(stat[stat.rindex(")") + 2 :].split()[2]) != pgid:
                continue
            with open(f"/proc/{entry.name}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        found[int(entry.name)] = int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--checkpoint", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--inline-nodes", type=int, default=None)
    args = parser.parse_args()
    run_id = uuid.uuid4().hex[:8]
    queue = f"bench-memory-{run_id}"
    with throwaway_database(ADMIN_DSN, f"bench_memory_{run_id}") as url:
        os.environ.update(
            BENCH_ENGINE_BROKER=BROKER,
            BENCH_ENGINE_DURABLE_QUEUE=queue,
            CELERY_DURABLE_DATABASE_URL=url,
        )
        from bench import engine_app as apps

        apps.durable.migrate()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if args.inline_nodes is not None:
            env["CELERY_DURABLE_INLINE_NODES"] = str(args.inline_nodes)
        side = Side("durable", "durable_app", queue, apps.graph.delay, lambda r, t: 0.0)
        readings: dict[int, dict[int, int]] = {}
        try:
            with worker(side, args.concurrency, env, Path(tempfile.mkdtemp())) as (_, pgid):
                done = 0
                while done < args.runs:
                    batch = [apps.graph.delay() for _ in range(min(BATCH, args.runs - done))]
                    for run in batch:
                        assert run.wait(timeout=120).count == 5
                    done += len(batch)
                    if done in (args.checkpoint, args.runs):
                        readings[done] = rss_kib(pgid)
                        print(f"{done} runs: RSS KiB {readings[done]}", flush=True)
        finally:
            apps.durable.db.dispose()
            delete_queues(apps.durable_app, [queue])
    first, last = readings[args.checkpoint], readings[args.runs]
    print(f"\nRSS after {args.checkpoint} and after {args.runs} runs, per worker process:")
    for pid in sorted(first):
        if pid in last:
            growth = last[pid] / first[pid]
            print(
                f"  pid {pid}: {first[pid] / 1024:6.1f} MiB -> {last[pid] / 1024:6.1f} MiB "
                f"({growth:.3f}x)"
            )
    total = sum(last.values()) / sum(first.values())
    print(f"  all processes: {total:.3f}x (goal: within 1.10x)")


if __name__ == "__main__":
    main()
