"""The same 5-step workflow on celery-durable, DBOS Transact and LangGraph's PostgreSQL
checkpointer, in one run, against the same PostgreSQL: latency, steps per second, and what
each writes to the database per run.

How to run, from the repository root (PostgreSQL and RabbitMQ on loopback; the peers come
with the ``bench`` extra: ``pip install -e '.[bench]'``)::

    .venv/bin/python bench/peers.py [--runs 500] [--latency-runs 100] [--rounds 3]

Each system gets a throwaway database of its own (created under BENCH_ENGINE_PG, dropped at
exit). The workflow: five steps, each adding one to a counter, each step's result made
durable before the next one runs.

- celery-durable: bench/engine_app.py's graph n1 -> ... -> n5 with the engine's defaults, one
  worker subprocess ``-P prefork -c 2`` (bench/engine.py's), started with ``.delay()`` and
  awaited with ``run.wait()``;
- DBOS Transact: a ``@DBOS.workflow`` calling five ``@DBOS.step`` functions, in this process
  (DBOS runs workflows in the application's process), started with ``DBOS.start_workflow``;
- LangGraph: a StateGraph of five nodes compiled with ``PostgresSaver`` (a psycopg pool),
  each run a thread of its own, invoked from 2 threads.

Throughput: ``--runs`` runs started at once, time until the last finished; steps/s = runs/s
x 5. Latency: ``--latency-runs`` runs one after another, p50 and p95. Writes: rows a run
leaves in the database (all its tables, counted) and WAL bytes written per run
(pg_current_wal_lsn), in the throughput phase: the machine should be otherwise idle for the
WAL figure to be this system's alone. Figures are the median of ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.engine import ADMIN_DSN, BROKER, pct, worker  # noqa: E402
from celery_durable.testing import throwaway_database  # noqa: E402

STEPS = 5


@dataclass
class Figures:
    runs_s: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    rows: list[float] = field(default_factory=list)
    wal: list[float] = field(default_factory=list)


@dataclass
class System:
    name: str
    url: str  # a SQLAlchemy-style URL of its database
    start: Callable[[], Any]  # start one run, return something to wait on
    wait: Callable[[Any], None]
    parallel: Callable[[int], None] | None = None  # start and finish n runs at once


def dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def writes(url: str) -> tuple[int, int]:
    """Rows stored in this database's tables so far, and the server's WAL position."""
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        tables = conn.execute(
            "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) "
            "FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        rows = 0
        for (table,) in tables:
            count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            rows += int(count[0]) if count else 0
        lsn = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    return rows, int(lsn[0] if lsn else 0)


def measure(system: System, runs: int, latency_runs: int, figures: Figures) -> None:
    for _ in range(20):  # warm up
        system.wait(system.start())
    rows0, wal0 = writes(system.url)
    started = time.perf_counter()
    if system.parallel is not None:
        system.parallel(runs)
    else:
        for handle in [system.start() for _ in range(runs)]:
            system.wait(handle)
    figures.runs_s.append(runs / (time.perf_counter() - started))
    rows1, wal1 = writes(system.url)
    figures.rows.append((rows1 - rows0) / runs)
    figures.wal.append((wal1 - wal0) / runs)
    for _ in range(latency_runs):
        t0 = time.perf_counter()
        system.wait(system.start())
        figures.latency_ms.append((time.perf_counter() - t0) * 1000)


# -- the three systems --------------------------------------------------------------------


def dbos_system(url: str) -> System:
    from dbos import DBOS

    @DBOS.step()
    def step(count: int) -> int:
        return count + 1

    @DBOS.workflow()
    def five(count: int) -> int:
        for _ in range(STEPS):
            count = step(count)
        return count

    DBOS(config={"name": "bench_peers", "system_database_url": dsn(url), "log_level": "ERROR"})
    DBOS.launch()

    def wait(handle: Any) -> None:
        assert handle.get_result() == STEPS

    return System("DBOS", url, lambda: DBOS.start_workflow(five, 0), wait)


def langgraph_system(url: str) -> tuple[System, Callable[[], None]]:
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.graph import END, START, StateGraph
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool
    from typing_extensions import TypedDict

    class Count(TypedDict):
        count: int

    def step(state: Count) -> Count:
        return {"count": state["count"] + 1}

    builder = StateGraph(Count)
    names = [f"n{i}" for i in range(1, STEPS + 1)]
    for name in names:
        builder.add_node(name, step)
    builder.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        builder.add_edge(a, b)
    builder.add_edge(names[-1], END)
    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    pool = ConnectionPool(dsn(url), max_size=4, kwargs=kwargs, open=True)
    saver = PostgresSaver(pool)  # type: ignore[arg-type]
    saver.setup()
    graph = builder.compile(checkpointer=saver)

    def run() -> None:
        config = {"configurable": {"thread_id": uuid.uuid4().hex}}
        assert graph.invoke({"count": 0}, config)["count"] == STEPS  # type: ignore[arg-type]

    def parallel(n: int) -> None:
        with ThreadPoolExecutor(2) as threads:
            for future in [threads.submit(run) for _ in range(n)]:
                future.result()

    system = System("LangGraph", url, lambda: None, lambda _: run(), parallel)
    return system, pool.close


def ours_system(url: str) -> System:
    from bench import engine_app as apps

    def wait(run: Any) -> None:
        assert run.wait(timeout=120).count == STEPS

    return System("celery-durable", url, apps.graph.delay, wait)


# -- main ---------------------------------------------------------------------------------


def report(args: argparse.Namespace, results: dict[str, Figures]) -> None:
    print()
    print(
        f"{os.cpu_count()} cores; {args.runs} runs at once for throughput, "
        f"{args.latency_runs} one at a time for latency, median of {args.rounds} rounds"
    )
    print(
        f"  {'system':<16} {'steps/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'rows/run':>9} "
        f"{'WAL bytes/run':>14}"
    )
    for name, f in results.items():
        print(
            f"  {name:<16} {statistics.median(f.runs_s) * STEPS:>8.0f} "
            f"{pct(f.latency_ms, 50):>7.2f} {pct(f.latency_ms, 95):>7.2f} "
            f"{statistics.median(f.rows):>9.1f} {statistics.median(f.wal):>14.0f}"
        )
    ours = results["celery-durable"]
    print("Ratios, celery-durable / peer: steps/s (aim >= 2), p50 latency (aim <= 0.7)")
    for name, f in results.items():
        if name != "celery-durable":
            tput = statistics.median(ours.runs_s) / statistics.median(f.runs_s)
            lat = pct(ours.latency_ms, 50) / pct(f.latency_ms, 50)
            print(f"  vs {name:<12} {tput:5.2f}  {lat:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--latency-runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2, help="our worker's -c")
    args = parser.parse_args()
    run_id = uuid.uuid4().hex[:8]
    results = {name: Figures() for name in ("celery-durable", "DBOS", "LangGraph")}
    with (
        throwaway_database(ADMIN_DSN, f"bench_peers_{run_id}_ours") as ours_url,
        throwaway_database(ADMIN_DSN, f"bench_peers_{run_id}_dbos") as dbos_url,
        throwaway_database(ADMIN_DSN, f"bench_peers_{run_id}_langgraph") as lg_url,
    ):
        queue = f"bench-peers-{run_id}"
        os.environ.update(
            BENCH_ENGINE_BROKER=BROKER,
            BENCH_ENGINE_DURABLE_QUEUE=queue,
            CELERY_DURABLE_DATABASE_URL=ours_url,
        )
        from bench import engine_app as apps
        from bench.engine import Side, delete_queues

        apps.durable.migrate()
        ours = ours_system(ours_url)
        dbos = dbos_system(dbos_url)
        langgraph, close_langgraph = langgraph_system(lg_url)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        logdir = Path(tempfile.mkdtemp(prefix="bench-peers-"))
        side = Side("durable", "durable_app", queue, ours.start, lambda r, t: 0.0)
        try:
            for i in range(args.rounds):
                with worker(side, args.concurrency, env, logdir):
                    measure(ours, args.runs, args.latency_runs, results["celery-durable"])
                measure(dbos, args.runs, args.latency_runs, results["DBOS"])
                measure(langgraph, args.runs, args.latency_runs, results["LangGraph"])
                print(f"round {i + 1} done", flush=True)
            report(args, results)
        finally:
            from dbos import DBOS

            DBOS.destroy()
            close_langgraph()
            apps.durable.db.dispose()
            delete_queues(apps.durable_app, [queue])


if __name__ == "__main__":
    main()
