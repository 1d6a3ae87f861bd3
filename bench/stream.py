"""Live streams under load: 100 runs at once on a real worker, each read by its own
``run.stream()``, every checkpoint and emitted value checked, and how long each took to
reach its reader.

Why this exists: ``run.stream()`` promises every checkpoint, in order, none missed, as it
commits. On PostgreSQL a commit of a streamed run notifies its readers (LISTEN/NOTIFY); this
measures the delay from the moment a worker stamps a checkpoint (``created_at``, as it
sends the commit) or a value (``ctx.emit``) to the moment the reader's iterator yields it,
and checks each stream against the run's history. The aim: p95 under 50 ms. It asserts
nothing about timing; it fails if a stream missed, repeated or reordered anything.

A round starts ``--runs`` runs at once, each with its entry delayed by ``--countdown``
seconds so that every reader is listening before the first node runs (only the start
checkpoint, committed before its reader opened, is left out of the delays). Each run is
``n1 -> ... -> n5``; each node emits one value, sleeps ``--pause`` seconds and returns
count + 1. The same round without readers gives the throughput streaming is compared to:
what notifying a streamed run's commits costs the fleet.

How to run, from the repository root (PostgreSQL, RabbitMQ on loopback)::

    .venv/bin/python bench/stream.py [--runs 100] [--rounds 3] [--concurrency 2]
                                     [--pause 0.0] [--countdown 2.0]

BENCH_STREAM_PG (an admin URL, default postgresql://root@127.0.0.1:5432/postgres) and
BENCH_STREAM_BROKER (default amqp://guest:guest@127.0.0.1:5672//) point it elsewhere. It
creates a throwaway database ``bench_stream_<random>`` (dropped at exit) and a queue of its
own (deleted at exit); the worker is ``celery -A bench.stream:app worker -P prefork -c N``,
its log kept only when the bench fails.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery import Celery
from pydantic import BaseModel

from celery_durable import Checkpoint, Context, Durable, Execution, Graph
from celery_durable.persistence.stream_rows import Emitted
from celery_durable.testing import throwaway_database
from celery_durable.worker_processes import WorkerProcesses

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("BENCH_STREAM_PG", "postgresql://root@127.0.0.1:5432/postgres")
BROKER = os.environ.get("BENCH_STREAM_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
QUEUE = os.environ.get("BENCH_STREAM_QUEUE", "bench-stream")
# Without a URL in the environment the Durable stays lazy: importing this connects nowhere.
DATABASE_URL = os.environ.get(
    "CELERY_DURABLE_DATABASE_URL", "postgresql+psycopg://root@127.0.0.1:5432/bench_stream_unset"
)
NODES = ("n1", "n2", "n3", "n4", "n5")
RUN_TIMEOUT = 120.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Count(BaseModel):
    count: int = 0
    pause: float = 0.0


@dataclass
class Bench:
    """One app, its Durable and the graph: the worker's, built at import, and the client's."""

    app: Celery
    durable: Durable
    graph: Graph


def build(database_url: str, queue: str) -> Bench:
    app = Celery("bench_stream", broker=BROKER)
    app.conf.update(
        task_default_queue=queue,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_ignore_result=True,
    )
    durable = Durable(app, database_url)
    graph = durable.graph("bench_stream", state=Count)

    def make(name: str) -> None:
        def node(state: Count, ctx: Context) -> dict[str, int]:
            ctx.emit({"node": name})
            if state.pause:
                time.sleep(state.pause)
            return {"count": state.count + 1}

        node.__name__ = node.__qualname__ = name
        graph.node(node)

    for name in NODES:
        make(name)
    graph.entry(NODES[0])
    for a, b in itertools.pairwise(NODES):
        graph.edge(a, b)
    return Bench(app, durable, graph)


app = build(DATABASE_URL, QUEUE).app


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Round:
    streamed: bool
    runs: int
    seconds: float = 0.0
    checkpoint_ms: list[float] = field(default_factory=list)
    emit_ms: list[float] = field(default_factory=list)
    other_cpu: float = 0.0
    client_ms: float = 0.0  # CPU per run: this process (the readers, when streamed)
    worker_ms: float = 0.0  # CPU per run: the worker and its pool

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.seconds


class Reader(threading.Thread):
    """One run's stream: every item with the moment it was yielded."""

    def __init__(self, run: Execution) -> None:
        super().__init__(daemon=True)
        self.run_ = run
        self.seen: list[tuple[Checkpoint | Emitted, datetime]] = []
        self.opened = datetime.now(UTC)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for item in self.run_.stream(timeout=RUN_TIMEOUT):
                self.seen.append((item, datetime.now(UTC)))
        except BaseException as exc:  # reported by the bench, not lost in a thread
            self.error = exc


def check(reader: Reader) -> None:
    """The stream holds the run's history, in order, once, each node's value before its
    checkpoint; raises otherwise."""
    run = reader.run_
    if reader.error is not None:
        raise RuntimeError(f"stream of {run.id} failed: {reader.error!r}")
    items = [item for item, _ in reader.seen]
    streamed = [(c.seq, str(c.kind), c.node) for c in items if isinstance(c, Checkpoint)]
    history = [(c.seq, str(c.kind), c.node) for c in run.history()]
    if streamed != history or [s for s, _, _ in history] != list(range(len(history))):
        raise RuntimeError(f"stream of {run.id} is not its history:\n{streamed}\n{history}")
    shown = [(i.seq, i.node) if isinstance(i, Emitted) else (i.seq, "") for i in items]
    expected = [(0, "")] + [p for k, n in enumerate(NODES) for p in ((k, n), (k + 1, ""))]
    if shown != expected:
        raise RuntimeError(f"values of {run.id} out of place: {shown}")


def measure(bench: Bench, args: argparse.Namespace, worker_pgid: int, streamed: bool) -> Round:
    runs, pause, countdown = args.runs, args.pause, args.countdown
    result = Round(streamed, runs)
    load = OtherLoad(worker_pgid)
    client, worker = _client_cpu_s(), _group_cpu_s(worker_pgid)
    start = time.perf_counter()
    handles = [
        bench.durable.start(bench.graph, {"pause": pause}, countdown=countdown) for _ in range(runs)
    ]
    readers = [Reader(run) for run in handles] if streamed else []
    for reader in readers:
        reader.start()
    for run in handles:
        state = run.wait(timeout=RUN_TIMEOUT)
        if state.count != len(NODES):
            raise RuntimeError(f"run {run.id} ended with count {state.count}")
    result.seconds = time.perf_counter() - start - countdown
    for reader in readers:
        reader.join(RUN_TIMEOUT)
        check(reader)
        for item, seen in reader.seen:
            if item.created_at < reader.opened:
                continue  # committed before its reader listened: not a live delay
            delay = (seen - item.created_at).total_seconds() * 1000
            (result.emit_ms if isinstance(item, Emitted) else result.checkpoint_ms).append(delay)
    result.other_cpu = load.cores()
    result.client_ms = (_client_cpu_s() - client) * 1000 / runs
    result.worker_ms = (_group_cpu_s(worker_pgid) - worker) * 1000 / runs
    return result


class OtherLoad:
    """Cores kept busy, on average, by everything but this client and its worker's process
    group (PostgreSQL and RabbitMQ included: they serve the bench, and others)."""

    def __init__(self, worker_pgid: int) -> None:
        self.pgid = worker_pgid
        self.start, self.busy, self.ours = time.perf_counter(), _busy_cpu_s(), self._ours()

    def cores(self) -> float:
        busy = _busy_cpu_s() - self.busy
        ours = self._ours() - self.ours
        return max(busy - ours, 0.0) / (time.perf_counter() - self.start)

    def _ours(self) -> float:
        return _client_cpu_s() + _group_cpu_s(self.pgid)


def _client_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _busy_cpu_s() -> float:
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS


def _group_cpu_s(pgid: int) -> float:
    """CPU seconds of the processes in group ``pgid`` (the worker and its pool)."""
    used = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid:
                used += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return used


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(name: str, values: list[float]) -> str:
    if not values:
        return f"  {name:<12} (none)"
    return (
        f"  {name:<12} {len(values):6d}  p50 {percentile(values, 50):7.2f}  "
        f"p95 {percentile(values, 95):7.2f}  p99 {percentile(values, 99):7.2f}  "
        f"max {max(values):8.2f}"
    )


# -- running --------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="runs started at once")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, streamed and not")
    parser.add_argument("--concurrency", type=int, default=2, help="worker -c")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds each node sleeps")
    parser.add_argument(
        "--countdown", type=float, default=2.0, help="seconds before the runs' entry nodes"
    )
    return parser.parse_args()


@contextlib.contextmanager
def worker(env: dict[str, str], queue: str, concurrency: int, logdir: Path) -> Any:
    workers = WorkerProcesses("bench.stream:app", env, logdir, cwd=ROOT)
    try:
        yield workers.start(queue, concurrency)
    finally:
        workers.cleanup()


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    run_id = uuid.uuid4().hex[:10]
    queue = f"bench-stream-{run_id}"
    logdir = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    failed = True
    with throwaway_database(ADMIN_DSN, f"bench_stream_{run_id}") as url:
        bench = build(url, queue)
        bench.durable.migrate()
        paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {
            "CELERY_DURABLE_DATABASE_URL": url,
            "BENCH_STREAM_QUEUE": queue,
            "BENCH_STREAM_BROKER": BROKER,
            "PYTHONPATH": os.pathsep.join(paths),
        }
        try:
            with worker(env, queue, args.concurrency, logdir) as started:
                for _ in range(3):  # warm up: pools, prepared statements, the listener
                    bench.durable.start(bench.graph, {}).wait(timeout=RUN_TIMEOUT)
                rounds: list[Round] = []
                for i in range(args.rounds):
                    for streamed in (True, False) if i % 2 == 0 else (False, True):
                        r = measure(bench, args, started.pid, streamed)
                        rounds.append(r)
                        print(
                            f"round {i + 1} {'streamed' if streamed else 'plain':<8} "
                            f"{r.runs_per_s:6.1f} runs/s"
                            + (
                                f", checkpoint p95 {percentile(r.checkpoint_ms, 95):6.2f} ms"
                                if streamed
                                else ""
                            )
                            + f" (other load {r.other_cpu:.2f} cores)",
                            flush=True,
                        )
            report(args, rounds)
            failed = False
        finally:
            with contextlib.suppress(Exception), bench.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(queue)
            bench.durable.db.dispose()
            if failed:
                print(f"worker logs kept in {logdir}", file=sys.stderr)
            else:
                shutil.rmtree(logdir, ignore_errors=True)


def report(args: argparse.Namespace, rounds: list[Round]) -> None:
    streamed = [r for r in rounds if r.streamed]
    plain = [r for r in rounds if not r.streamed]
    checkpoint_ms = [d for r in streamed for d in r.checkpoint_ms]
    emit_ms = [d for r in streamed for d in r.emit_ms]
    print(
        f"\n{args.runs} runs x {len(NODES)} nodes at once, each node emitting one value, "
        f"worker -P prefork -c {args.concurrency}, pause {args.pause} s, {args.rounds} rounds; "
        f"every stream matched its run's history (in order, none missed, none twice)."
    )
    print("Delay from the worker's stamp to the reader's iterator, ms (all streamed rounds):")
    print(summary("checkpoints", checkpoint_ms))
    print(summary("values", emit_ms))
    p95 = percentile(checkpoint_ms, 95)
    print(f"  checkpoint p95 {p95:.2f} ms (aim < 50 ms: {'met' if p95 < 50 else 'NOT met'})")
    streamed_rate = statistics.median(r.runs_per_s for r in streamed)
    plain_rate = statistics.median(r.runs_per_s for r in plain)
    print(
        f"Throughput, median of rounds: streamed {streamed_rate:.1f} runs/s, "
        f"not streamed {plain_rate:.1f} runs/s, ratio {streamed_rate / plain_rate:.2f}; "
        f"other load {statistics.fmean(r.other_cpu for r in rounds):.2f} cores on average"
    )
    for name, group in (("streamed", streamed), ("not streamed", plain)):
        client = statistics.median(r.client_ms for r in group)
        worker = statistics.median(r.worker_ms for r in group)
        print(f"CPU per run, {name}: client {client:.2f} ms, worker {worker:.2f} ms")


if __name__ == "__main__":
    main()
