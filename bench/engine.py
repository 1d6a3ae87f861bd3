"""What durability costs: a 5-node durable graph against a plain 5-task Celery chain.

Why this exists: celery-durable commits a checkpoint to PostgreSQL after every node, before
dispatching the next one. The promise is that this costs little next to Celery itself: at
least 0.8x plain Celery's throughput and at most 1.4x its latency. This script measures both
sides in one run, on the same RabbitMQ, with the same worker settings, and prints the figures
and the ratios. It asserts nothing about timing.

How to run, from the repository root (PostgreSQL, RabbitMQ on loopback)::

    .venv/bin/python bench/engine.py [--runs 500] [--latency-runs 100] [--concurrency 2]
                                     [--warmup 20] [--rounds 3] [--inline-nodes N] [--timeouts]
                                     [--fan-out] [--naive] [--hops] [--no-flush]

BENCH_ENGINE_PG (an admin URL, default postgresql://root@127.0.0.1:5432/postgres) and
BENCH_ENGINE_BROKER (default amqp://guest:guest@127.0.0.1:5672//) point it elsewhere.

What it does:

- creates a throwaway database ``bench_engine_<random>`` (migrated with durable.migrate()) and
  drops it at exit, on error, Ctrl-C and SIGTERM too; queue and worker names are unique to
  the run and the queues are deleted at exit; worker logs go to a temporary directory, kept
  (and named) only when the bench fails;
- per round, for each side in turn (the order alternates between rounds), starts one worker
  subprocess for that side only (``celery -A bench.engine_app:<side>_app worker -P prefork
  -c N --prefetch-multiplier 1 -l WARNING --without-gossip --without-mingle
  --without-heartbeat``, own process group), warms it up, measures, and stops it;
- throughput: ``--runs`` runs submitted at once; time from the first submit to the last
  completion seen by the client; runs/s and nodes/s (5 per run);
- latency: ``--latency-runs`` runs one at a time (submit, wait for completion): mean, p50, p95.

Both sides are acks late with requeue on worker loss (durable's delivery guarantee), JSON
only, prefetch 1. The plain chain is ``chain(n1.s(0), n2.s(), ..., n5.s())``, each task
returning count + 1. The durable graph is n1 -> ... -> n5, each node returning
``{"count": state.count + 1}``; completion is what a user sees: ``run.wait()``.

How the durable worker hands a node on is the engine's default unless ``--inline-nodes`` says
otherwise (it sets CELERY_DURABLE_INLINE_NODES for the durable worker): by default, after a
node commits, the one node that follows runs in the same task, so a run is one message and
five commits; ``--inline-nodes 0`` publishes every node as a message of its own, five
messages and five commits, like the plain chain's five messages. Either way every node
commits its checkpoint before the next one starts. The "nodes/s" column is runs/s x 5.

With ``--fan-out`` both sides run another shape: one node, ten in parallel, a join. The plain
side is the Celery chord ``chain(root.s(0), group(part.s() x 10), join.s())`` on a Redis
result backend (chords need one that counts: the ``redis`` client comes with the ``bench``
extra; BENCH_ENGINE_CHORD_BACKEND, default redis://127.0.0.1:6379/15); the durable side is
the graph root -> part0..part9 -> join, the parts' updates merged by a reducer. 12 nodes.

With ``--naive`` another side, "naive", runs the plain chain with each task committing a
checkpoint row by hand first (one prepared ``INSERT``, autocommitted, on a connection each
pool process keeps; no start row, no engine): the ratio durable / naive is what the engine
costs beyond the commits themselves, and naive / plain what a commit per node costs here.

With ``--timeouts`` a third side, "timed", runs the same graph with ``timeout=30`` on every
node, on a durable worker of its own: the ratio timed / durable is what a timeout costs.

With ``--hops`` every worker also times each task in its pool processes, and within a durable
node its commit and the next node's publish (``bench/hops.py``); the report ends with their
p50 over the one-at-a-time runs: a hop's critical path, read where it happens.

``--no-flush`` is for diagnosis only: the throwaway database commits with
``synchronous_commit=off``, so no commit waits for its WAL flush (a crash of PostgreSQL may
then lose the last commits: never a production setting). Run with ``--naive``, it shows how
much of the gap to the plain chain is the disk's flush and how much is everything else; the
report then applies no bar.

The plain side's completion signal: the ``redis`` client package is not installed here, so
instead of a Redis result backend the plain app uses Celery's ``rpc://`` result backend on the
same RabbitMQ. Only the last task stores a result (n1..n4 ignore_result=True): one extra AMQP
publish per run to the client's reply queue, pushed to the waiting client, no database and
no polling; the client calls ``get(follow_parents=False)`` (the parents store nothing, and
following them costs ~1.7 ms of rpc look-ups per run). That is Celery's cheapest built-in way
to learn that a chain finished, so the baseline is as strict as it can be made.

Two views of every figure are printed:

- "seen": as the client observes it (``AsyncResult.get()`` / ``run.wait()``). This is the
  figure the bars apply to; it includes the cost of the completion signal (run.wait()'s
  look at the row and its wake-up by the notification that carries the final row, the rpc
  reply);
- "engine": when the run actually finished: the plain chain's last task returns
  ``time.time()``, the durable execution's ``finished_at`` is written by its last commit.
  The gap between the two is the cost of the client's completion signal, not of the engine.

"CPU per run" is the CPU time the client, the worker (all its processes), RabbitMQ and
PostgreSQL spent during the throughput phase, divided by the runs: where the cost goes.

"other load" is how many cores, on average, processes outside the bench (not the client,
its worker, RabbitMQ, PostgreSQL's own processes or its backends on the bench database) kept
busy while a side was measured: on a shared 2-core machine, figures taken with other load
well above 0 are not comparable.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from celery_durable.testing import throwaway_database

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("BENCH_ENGINE_PG", "postgresql://root@127.0.0.1:5432/postgres")
BROKER = os.environ.get("BENCH_ENGINE_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
NODES_PER_RUN = 5
SIDES = ("plain", "durable")
BOOT_TIMEOUT = 60.0
TIMED = "; timed: the same graph with timeout=30 on every node"
RUN_TIMEOUT = 120.0


@dataclass
class Round:
    """One side's figures from one worker's lifetime."""

    side: str
    runs: int
    seen_s: float = 0.0  # first submit -> last completion seen by the client
    engine_s: float = 0.0  # first submit -> last run actually finished
    submit_s: float = 0.0  # first submit -> last submit returned
    seen_ms: list[float] = field(default_factory=list)
    engine_ms: list[float] = field(default_factory=list)
    other_cpu: float = 0.0  # cores busy with processes not part of this bench, on average
    cpu_ms: dict[str, float] = field(default_factory=dict)  # CPU per run in the throughput phase
    latency_window: tuple[float, float] = (0.0, 0.0)  # epoch seconds: the one-at-a-time runs

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.seen_s

    @property
    def engine_runs_per_s(self) -> float:
        return self.runs / self.engine_s


@dataclass
class Side:
    """How to start one run and wait for it; wait returns when it finished (epoch s)."""

    name: str
    app_attr: str
    queue: str
    submit: Callable[[], Any]
    wait: Callable[[Any, float], float]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500, help="runs submitted at once")
    parser.add_argument("--latency-runs", type=int, default=100, help="runs one at a time")
    parser.add_argument("--concurrency", type=int, default=2, help="worker -c")
    parser.add_argument("--warmup", type=int, default=20, help="runs before measuring")
    parser.add_argument("--rounds", type=int, default=3, help="worker lifetimes per side")
    parser.add_argument(
        "--inline-nodes",
        type=int,
        default=None,
        help="the durable worker's inline_nodes (default: the engine's; 0: a message per node)",
    )
    parser.add_argument(
        "--fan-out",
        action="store_true",
        help="one node, ten in parallel, a join: a durable graph against a Celery chord",
    )
    parser.add_argument(
        "--naive",
        action="store_true",
        help="also measure the plain chain with a hand-written checkpoint INSERT per task",
    )
    parser.add_argument(
        "--timeouts",
        action="store_true",
        help="also measure the durable graph with timeout=30 on every node (side 'timed')",
    )
    parser.add_argument(
        "--hops",
        action="store_true",
        help="also print where a node's time goes in the pool process (bench/hops.py)",
    )
    parser.add_argument(
        "--no-flush",
        action="store_true",
        help="diagnosis only: the bench database commits without waiting for its WAL flush "
        "(synchronous_commit=off); not durable, and no bar applies",
    )
    return parser.parse_args()


# -- database and broker ------------------------------------------------------------------


def server_version(database: str) -> str:
    with psycopg.connect(f"{ADMIN_DSN.rpartition('/')[0]}/{database}", autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        commit = conn.execute("SHOW synchronous_commit").fetchone()
    return (
        f"PostgreSQL {version[0].split()[0] if version else '?'} "
        f"(synchronous_commit={commit[0] if commit else '?'})"
    )


def delete_queues(app: Any, queues: list[str]) -> None:
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in queues:
            with contextlib.suppress(Exception):
                channel.queue_delete(queue)


# -- workers ------------------------------------------------------------------------------


@contextlib.contextmanager
def worker(
    side: Side, concurrency: int, env: dict[str, str], logdir: Path
) -> Iterator[tuple[Path, int]]:
    """One worker for one side, in a session of its own; stopped (warm, then hard) at exit."""
    log = logdir / f"{side.name}-worker.log"
    cmd = [
        sys.executable, "-m", "celery", "-A", f"bench.engine_app:{side.app_attr}", "worker",
        "-P", "prefork", "-c", str(concurrency), "-Q", side.queue,
        "--prefetch-multiplier", "1", "-l", "WARNING",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "-n", f"bench-{side.name}-{uuid.uuid4().hex[:6]}@%h",
    ]  # fmt: skip
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield log, proc.pid
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
    # Whatever is left of this worker's own process group (pool children): gone.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# -- the machine: how busy other processes kept it -----------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def busy_cpu_s() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS  # minus idle and iowait


CPU_PARTS = ("client", "worker", "rabbitmq", "postgres")


def bench_cpu(worker_pgid: int, database: str) -> dict[str, float]:
    """CPU seconds used so far by this bench, by part: the client, its worker's process
    group, RabbitMQ, PostgreSQL (its own processes and its backends on the bench database)."""
    used = dict.fromkeys(CPU_PARTS, 0.0)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            pid, pgid = int(entry.name), int(fields[2])
            part = None
            if pid == os.getpid():
                part = "client"
            elif pgid == worker_pgid:
                part = "worker"
            elif comm in ("beam.smp", "epmd"):
                part = "rabbitmq"
            elif comm == "postgres":
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    cmdline = f.read().decode(errors="replace")
                is_backend = "(" in cmdline or "[local]" in cmdline
                part = "postgres" if database in cmdline or not is_backend else None
            if part is not None:
                used[part] += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        except (OSError, ValueError, IndexError):
            continue
    return used


class OtherLoad:
    """Cores kept busy, on average, by processes outside the bench while it measured."""

    def __init__(self, worker_pgid: int, database: str) -> None:
        self.pgid, self.database = worker_pgid, database
        self.start = time.perf_counter()
        self.busy, self.ours = busy_cpu_s(), sum(bench_cpu(worker_pgid, database).values())

    def cores(self) -> float:
        busy = busy_cpu_s() - self.busy
        ours = sum(bench_cpu(self.pgid, self.database).values()) - self.ours
        return max(busy - ours, 0.0) / (time.perf_counter() - self.start)


# -- measuring ----------------------------------------------------------------------------


def warm_up(side: Side, runs: int, log: Path) -> None:
    try:
        side.wait(side.submit(), BOOT_TIMEOUT)  # the first one also waits for the worker
    except Exception as exc:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise RuntimeError(f"{side.name} worker did not run a warm-up run: {exc}\n{tail}") from exc
    for _ in range(max(runs - 1, 0)):
        side.wait(side.submit(), RUN_TIMEOUT)
    burst = [side.submit() for _ in range(max(runs, 1))]
    for handle in burst:
        side.wait(handle, RUN_TIMEOUT)


def measure(side: Side, runs: int, latency_runs: int, load: OtherLoad) -> Round:
    result = Round(side.name, runs)
    # Throughput: everything at once, then wait for each (completions arrive meanwhile).
    cpu_before = bench_cpu(load.pgid, load.database)
    start_epoch, start = time.time(), time.perf_counter()
    handles = [side.submit() for _ in range(runs)]
    result.submit_s = time.perf_counter() - start
    finished = [side.wait(h, RUN_TIMEOUT) for h in handles]
    result.seen_s = time.perf_counter() - start
    result.engine_s = max(finished) - start_epoch
    cpu_after = bench_cpu(load.pgid, load.database)
    result.cpu_ms = {k: 1000 * (cpu_after[k] - cpu_before[k]) / runs for k in CPU_PARTS}
    # Latency: one run at a time.
    window_start = time.time()
    for _ in range(latency_runs):
        start_epoch, start = time.time(), time.perf_counter()
        done = side.wait(side.submit(), RUN_TIMEOUT)
        result.seen_ms.append((time.perf_counter() - start) * 1000)
        result.engine_ms.append((done - start_epoch) * 1000)
    result.latency_window = (window_start, time.time())
    result.other_cpu = load.cores()
    return result


def nodes_per_run(args: argparse.Namespace) -> int:
    """5 for the chain; 12 for the fan-out (one, ten in parallel, the join)."""
    return 12 if args.fan_out else NODES_PER_RUN


def make_sides(apps: Any, fan_out: bool = False) -> dict[str, Side]:
    expect = 1 + apps.FAN_OUT if fan_out else NODES_PER_RUN

    def plain_wait(handle: Any, timeout: float) -> float:
        # The parents store no result (ignore_result): there is nothing to follow, and
        # following them would add rpc round trips that are not part of the chain's work.
        count, finished_at = handle.get(timeout=timeout, follow_parents=False)
        if count != expect:
            raise RuntimeError(f"plain chain ended with count {count}")
        return float(finished_at)

    def durable_wait(run: Any, timeout: float) -> float:
        state = run.wait(timeout=timeout)
        if state.count != expect:
            raise RuntimeError(f"durable run {run.id} ended with count {state.count}")
        return float(run.record.finished_at.timestamp())

    if fan_out:
        return {
            "plain": Side(
                "plain",
                "chord_app",
                apps.CHORD_QUEUE,
                lambda: apps.plain_fanout().apply_async(),
                plain_wait,
            ),
            "durable": Side(
                "durable",
                "durable_app",
                apps.DURABLE_QUEUE,
                apps.fanout_graph.delay,
                durable_wait,
            ),
        }
    return {
        "plain": Side(
            "plain", "plain_app", apps.PLAIN_QUEUE,
            lambda: apps.plain_chain().apply_async(), plain_wait,
        ),
        "durable": Side(
            "durable", "durable_app", apps.DURABLE_QUEUE,
            apps.graph.delay, durable_wait,
        ),
        "timed": Side(
            "timed", "durable_app", apps.DURABLE_QUEUE, apps.timed_graph.delay, durable_wait,
        ),
        "naive": Side(
            "naive", "naive_app", apps.NAIVE_QUEUE,
            lambda: apps.naive_chain().apply_async(), plain_wait,
        ),
    }  # fmt: skip


# -- report -------------------------------------------------------------------------------


def pct(samples: list[float], p: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


def summary(rounds: list[Round]) -> dict[str, float]:
    seen = [x for r in rounds for x in r.seen_ms]
    engine = [x for r in rounds for x in r.engine_ms]
    return {
        "runs_s": statistics.median(r.runs_per_s for r in rounds),
        "engine_runs_s": statistics.median(r.engine_runs_per_s for r in rounds),
        "submit_ms_per_run": statistics.median(1000 * r.submit_s / r.runs for r in rounds),
        "mean": statistics.fmean(seen),
        "p50": pct(seen, 50),
        "p95": pct(seen, 95),
        "engine_mean": statistics.fmean(engine),
        "engine_p50": pct(engine, 50),
        "engine_p95": pct(engine, 95),
    }


def bars(args: argparse.Namespace) -> tuple[float, float | None]:
    """The least throughput and the most mean latency, against the baseline, that the shape
    measured is held to: by default 0.80 and 1.40; a message per node 0.70 and 1.50; fan-out,
    0.70 of the chord's throughput."""
    if args.fan_out:
        return 0.70, None
    if args.inline_nodes == 0:
        return 0.70, 1.50
    return 0.80, 1.40


def report(args: argparse.Namespace, results: dict[str, list[Round]], env_line: str) -> None:
    names = list(results)
    nodes = nodes_per_run(args)
    print()
    print(env_line)
    print()
    print("Per round (seen by the client):")
    print(
        f"  {'round':>5} {'side':<8} {'runs/s':>8} {'nodes/s':>8} {'mean ms':>8} {'p50 ms':>7}"
        f"  {'other load (cores)':>18}"
    )
    for i in range(args.rounds):
        for side in names:
            r = results[side][i]
            print(
                f"  {i + 1:>5} {side:<8} {r.runs_per_s:>8.1f} "
                f"{r.runs_per_s * nodes:>8.0f} {statistics.fmean(r.seen_ms):>8.2f} "
                f"{pct(r.seen_ms, 50):>7.2f}  {r.other_cpu:>18.2f}"
            )
    s = {side: summary(results[side]) for side in names}
    print()
    print(
        f"Summary: throughput = median of {args.rounds} rounds of {args.runs} runs; latency "
        f"over all {args.rounds * args.latency_runs} single runs."
    )
    head = (
        f"  {'side':<8} {'runs/s':>8} {'nodes/s':>8} {'mean ms':>8} {'p50 ms':>7} {'p95 ms':>7}"
        f"   | engine: {'runs/s':>7} {'mean ms':>8} {'p50 ms':>7} {'p95 ms':>7}"
        f"   | submit ms/run"
    )
    print(head)
    for side in names:
        x = s[side]
        print(
            f"  {side:<8} {x['runs_s']:>8.1f} {x['runs_s'] * nodes:>8.0f} "
            f"{x['mean']:>8.2f} {x['p50']:>7.2f} {x['p95']:>7.2f}"
            f"   |         {x['engine_runs_s']:>7.1f} {x['engine_mean']:>8.2f} "
            f"{x['engine_p50']:>7.2f} {x['engine_p95']:>7.2f}"
            f"   | {x['submit_ms_per_run']:>6.2f}"
        )
    print()
    print("CPU per run in the throughput phase, ms, all cores (median of the rounds):")
    print(f"  {'side':<8}" + "".join(f" {part:>9}" for part in (*CPU_PARTS, "total")))
    for side in names:
        parts = [statistics.median(r.cpu_ms[part] for r in results[side]) for part in CPU_PARTS]
        print(f"  {side:<8}" + "".join(f" {v:>9.2f}" for v in (*parts, sum(parts))))
    d, p = s["durable"], s["plain"]
    print()
    tput = d["runs_s"] / p["runs_s"]
    lat = d["mean"] / p["mean"]
    if args.no_flush:
        print("Ratios, durable / plain (seen by the client; commits not flushed: no bar applies):")
        print(f"  throughput   {tput:5.2f}")
        print(f"  latency mean {lat:5.2f}")
    else:
        print("Ratios, durable / plain (seen by the client; the bars apply to these):")
        least, most = bars(args)
        verdict = {True: "met", False: "missed"}
        print(f"  throughput   {tput:5.2f}   (bar >= {least:.2f}: {verdict[tput >= least]})")
        if most is None:
            print(f"  latency mean {lat:5.2f}")
        else:
            print(f"  latency mean {lat:5.2f}   (bar <= {most:.2f}: {verdict[lat <= most]})")
    print(f"  latency p50  {d['p50'] / p['p50']:5.2f}")
    print("Ratios, durable / plain (engine: when runs actually finished):")
    print(f"  throughput   {d['engine_runs_s'] / p['engine_runs_s']:5.2f}")
    print(f"  latency mean {d['engine_mean'] / p['engine_mean']:5.2f}")
    print(f"  latency p50  {d['engine_p50'] / p['engine_p50']:5.2f}")
    if "timed" in s:
        t = s["timed"]
        print("With timeout=30 on every node (timed), against the same graph without (durable):")
        print(
            f"  throughput   {t['runs_s'] / d['runs_s']:5.2f}   (timed / plain "
            f"{t['runs_s'] / p['runs_s']:.2f})"
        )
        print(f"  latency mean {t['mean'] / d['mean']:5.2f}")
    if "naive" in s:
        n = s["naive"]
        print("A checkpoint INSERT per task by hand (naive), against plain and durable:")
        print(
            f"  naive / plain:   throughput {n['runs_s'] / p['runs_s']:5.2f}, "
            f"latency mean {n['mean'] / p['mean']:5.2f}"
        )
        print(
            f"  durable / naive: throughput {d['runs_s'] / n['runs_s']:5.2f}, "
            f"latency mean {d['mean'] / n['mean']:5.2f}"
        )


def report_hops(directory: Path, results: dict[str, list[Round]]) -> None:
    from bench import hops

    print()
    print("Per hop in the pool process, latency phase, p50 ms (task: prerun to postrun;")
    print("commit: the wait for the node's answer, after its next message was built; publish:")
    print("sending that message; rest: the task less both):")
    print(f"  {'side':<8} {'hops':>6} " + " ".join(f"{part:>8}" for part in (*hops.PARTS, "rest")))
    for name, rounds in results.items():
        windows = [r.latency_window for r in rounds]
        print(f"  {name:<8} " + hops.report(directory / name, windows))


# -- main ---------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    run_id = uuid.uuid4().hex[:10]
    names = list(SIDES)
    if not args.fan_out:
        names += ["timed"] * args.timeouts + ["naive"] * args.naive
    queues = {side: f"bench-engine-{run_id}-{side}" for side in (*SIDES, "naive")}
    database = f"bench_engine_{run_id}"
    with throwaway_database(ADMIN_DSN, database) as url:
        if args.no_flush:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{database}" SET synchronous_commit = off')
        os.environ.update(
            BENCH_ENGINE_BROKER=BROKER,
            BENCH_ENGINE_PLAIN_QUEUE=queues["plain"],
            BENCH_ENGINE_DURABLE_QUEUE=queues["durable"],
            BENCH_ENGINE_NAIVE_QUEUE=queues["naive"],
            BENCH_ENGINE_CHORD_QUEUE=queues["plain"],
            CELERY_DURABLE_DATABASE_URL=url,
        )
        sys.path.insert(0, str(ROOT))
        import celery

        from bench import engine_app as apps

        paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        if args.inline_nodes is not None:
            env["CELERY_DURABLE_INLINE_NODES"] = str(args.inline_nodes)
        inline = env.get("CELERY_DURABLE_INLINE_NODES") or f"{apps.durable.settings.inline_nodes}"
        logdir = Path(tempfile.mkdtemp(prefix="bench-engine-"))
        try:
            apps.durable.migrate()
            apps.create_naive_table()
            sides = make_sides(apps, args.fan_out)
            results: dict[str, list[Round]] = {side: [] for side in names}
            for i in range(args.rounds):
                for name in names if i % 2 == 0 else names[::-1]:
                    side = sides[name]
                    side_env = env
                    if args.hops:
                        side_env = {**env, "BENCH_ENGINE_HOPS": str(logdir / "hops" / name)}
                    with worker(side, args.concurrency, side_env, logdir) as (log, pgid):
                        warm_up(side, args.warmup, log)
                        load = OtherLoad(pgid, database)
                        results[name].append(measure(side, args.runs, args.latency_runs, load))
                    r = results[name][-1]
                    print(
                        f"round {i + 1} {name:<8} {r.runs_per_s:7.1f} runs/s, "
                        f"latency mean {statistics.fmean(r.seen_ms):6.2f} ms "
                        f"(other load {r.other_cpu:.2f} cores)",
                        flush=True,
                    )
            env_line = (
                f"Environment: {os.cpu_count()} cores, worker -P prefork -c {args.concurrency} "
                f"(prefetch 1, acks late), N={args.runs} runs x {nodes_per_run(args)} nodes, "
                f"{args.latency_runs} latency runs, {args.warmup} warm-up, {args.rounds} rounds; "
                f"durable inline_nodes={inline}{TIMED if args.timeouts else ''}; "
                f"Python {platform.python_version()}, Celery {celery.__version__}, "
                f"{server_version(database)}, RabbitMQ at {BROKER.rpartition('@')[2]}"
            )
            report(args, results, env_line)
            if args.hops:
                report_hops(logdir / "hops", results)
        except BaseException:
            print(f"bench failed; worker logs kept in {logdir}", file=sys.stderr)
            raise
        else:
            shutil.rmtree(logdir, ignore_errors=True)
        finally:
            apps.durable.db.dispose()
            delete_queues(apps.plain_app, list(queues.values()))


if __name__ == "__main__":
    main()
