"""The two Celery apps bench/engine.py compares, each run by its own worker subprocess.

``plain_app``: a plain Celery chain of five no-op tasks (``plain_chain()``), acks late, only
the last task storing a result (on the ``rpc://`` backend, see bench/engine.py for why).
``chord_app`` and ``fanout_graph``: one node, ten in parallel, a join; as a Celery chord (on
a Redis result backend, which chords need) and as a durable graph on ``durable_app``.
``naive_app``: the plain chain again, each task first committing a checkpoint row of its own
(``INSERT`` autocommitted on a connection the pool process keeps, prepared): what "save a
checkpoint in each task" costs when written by hand, with no engine around it.
``durable_app``: a five-node durable graph, ``chain``, n1 -> n2 -> n3 -> n4 -> n5, each node
returning ``{"count": state.count + 1}``; ``timed_graph`` is the same with ``timeout=30`` on
every node.

Both apps get the same worker settings: the same broker, prefetch multiplier 1, acks late,
requeue when a worker dies, JSON only. Configured by environment, so that these run from the
repository root with ``PYTHONPATH=.``::

    celery -A bench.engine_app:plain_app worker -P prefork -c 2 ...
    celery -A bench.engine_app:durable_app worker -P prefork -c 2 ...

BENCH_ENGINE_BROKER           broker URL (default amqp://guest:guest@127.0.0.1:5672//)
BENCH_ENGINE_PLAIN_QUEUE      the plain side's queue (unique per bench run)
BENCH_ENGINE_DURABLE_QUEUE    the durable side's queue (unique per bench run)
BENCH_ENGINE_NAIVE_QUEUE      the naive side's queue (unique per bench run)
CELERY_DURABLE_DATABASE_URL   the durable side's checkpoint database (a throwaway one)
"""

from __future__ import annotations

import itertools
import json
import operator
import os
import time
from typing import Annotated, Any

from celery import Celery, chain, group
from celery.canvas import Signature
from pydantic import BaseModel

from celery_durable import Durable, Graph, Reduce

BROKER = os.environ.get("BENCH_ENGINE_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
PLAIN_QUEUE = os.environ.get("BENCH_ENGINE_PLAIN_QUEUE", "bench-engine-plain")
DURABLE_QUEUE = os.environ.get("BENCH_ENGINE_DURABLE_QUEUE", "bench-engine-durable")
# Without a URL in the environment (e.g. a plain worker), never touch a file or a database:
# the Durable below stays lazy and only a durable worker or client connects.
DATABASE_URL = os.environ.get(
    "CELERY_DURABLE_DATABASE_URL", "postgresql+psycopg://root@127.0.0.1:5432/bench_engine_unset"
)
NAIVE_QUEUE = os.environ.get("BENCH_ENGINE_NAIVE_QUEUE", "bench-engine-naive")
NODES = ("n1", "n2", "n3", "n4", "n5")


def _config(queue: str) -> dict[str, Any]:
    """What both sides share: the only differences are the queue and the result backend."""
    return {
        "task_default_queue": queue,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "task_ignore_result": True,
    }


# -- plain Celery ---------------------------------------------------------------------------

plain_app = Celery("bench_engine_plain", broker=BROKER, backend="rpc://")
plain_app.conf.update(_config(PLAIN_QUEUE), result_persistent=False)

_TASK_OPTIONS: dict[str, Any] = {
    "shared": False,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "serializer": "json",
    "typing": False,
}


def _step(count: int) -> int:
    return count + 1


def _last(count: int) -> list[float]:
    """The one result a run stores: the final count and when the run finished (epoch s)."""
    return [count + 1, time.time()]


plain_tasks = [
    plain_app.task(name=f"bench.plain.{name}", ignore_result=True, **_TASK_OPTIONS)(_step)
    for name in NODES[:-1]
]
plain_tasks.append(
    plain_app.task(name=f"bench.plain.{NODES[-1]}", ignore_result=False, **_TASK_OPTIONS)(_last)
)


def plain_chain() -> Signature:
    """chain(n1.s(0), n2.s(), n3.s(), n4.s(), n5.s()): its result is [5, finished_at]."""
    first, *rest = plain_tasks
    return chain(first.s(0), *(t.s() for t in rest))


# -- naive: the plain chain, each task inserting a checkpoint row itself --------------------

naive_app = Celery("bench_engine_naive", broker=BROKER, backend="rpc://")
naive_app.conf.update(_config(NAIVE_QUEUE), result_persistent=False)
NAIVE_TABLE = "bench_naive_checkpoints"
NAIVE_INSERT = (
    f"INSERT INTO {NAIVE_TABLE} (run_id, node, state, created_at) VALUES (%s, %s, %s, now())"
)


class _NaiveConnection:
    """The pool process's own connection, made on first use (a forked child makes its own)."""

    pid = 0
    conn: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls.pid != os.getpid():
            import psycopg

            dsn = DATABASE_URL.replace("postgresql+psycopg://", "postgresql://", 1)
            cls.conn, cls.pid = psycopg.connect(dsn, autocommit=True), os.getpid()
        return cls.conn


def create_naive_table() -> None:
    import psycopg

    dsn = DATABASE_URL.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {NAIVE_TABLE} (run_id text, node text, state text, "
            "created_at timestamptz, PRIMARY KEY (run_id, node))"
        )


def _naive_task(name: str, last: bool) -> Any:
    def task(self: Any, count: int) -> Any:
        state = json.dumps({"count": count + 1})
        _NaiveConnection.get().execute(
            NAIVE_INSERT, (self.request.root_id, name, state), prepare=True
        )
        return _last(count) if last else count + 1

    options = {**_TASK_OPTIONS, "bind": True, "ignore_result": not last}
    return naive_app.task(name=f"bench.naive.{name}", **options)(task)


naive_tasks = [_naive_task(name, name == NODES[-1]) for name in NODES]


def naive_chain() -> Signature:
    """The plain chain's shape on naive_app: its result is [5, finished_at]."""
    first, *rest = naive_tasks
    return chain(first.s(0), *(t.s() for t in rest))


# -- durable --------------------------------------------------------------------------------

durable_app = Celery("bench_engine_durable", broker=BROKER)
durable_app.conf.update(_config(DURABLE_QUEUE))
durable = Durable(durable_app, DATABASE_URL)


class Count(BaseModel):
    count: int = 0


def _chain(name: str, **options: Any) -> Graph:
    """n1 -> ... -> n5, each node returning count + 1, with ``options`` on every node."""
    g = durable.graph(name, state=Count)
    for node_name in NODES:

        def node(state: Count) -> dict[str, int]:
            return {"count": state.count + 1}

        node.__name__ = node.__qualname__ = node_name
        g.node(**options)(node)
    g.entry(NODES[0])
    for a, b in itertools.pairwise(NODES):
        g.edge(a, b)
    return g


graph = _chain("bench_chain")
# --timeouts: the same chain with timeout=30 on every node.
timed_graph = _chain("bench_chain_timed", timeout=30)


# -- fan-out: one node, ten in parallel, a join; against a Celery chord of the same shape ----

FAN_OUT = 10
CHORD_QUEUE = os.environ.get("BENCH_ENGINE_CHORD_QUEUE", "bench-engine-chord")
# A chord needs a result backend that counts its header's results: Redis, as in production.
CHORD_BACKEND = os.environ.get("BENCH_ENGINE_CHORD_BACKEND", "redis://127.0.0.1:6379/15")

chord_app = Celery("bench_engine_chord", broker=BROKER, backend=CHORD_BACKEND)
chord_app.conf.update(_config(CHORD_QUEUE))
_root = chord_app.task(name="bench.chord.root", ignore_result=True, **_TASK_OPTIONS)(_step)
_part = chord_app.task(name="bench.chord.part", ignore_result=False, **_TASK_OPTIONS)(_step)


def _join(counts: list[int]) -> list[float]:
    """1 (the root) + one per part: 11, and when the run finished."""
    return [1 + len(counts), time.time()]


_join_task = chord_app.task(name="bench.chord.join", ignore_result=False, **_TASK_OPTIONS)(_join)


def plain_fanout() -> Signature:
    """root -> group(10 parts) -> join: Celery makes the group and the join a chord."""
    return chain(_root.s(0), group(_part.s() for _ in range(FAN_OUT)), _join_task.s())


class Fan(BaseModel):
    count: int = 0
    parts: Annotated[list[int], Reduce(operator.add)] = []


fanout_graph = durable.graph("bench_fanout", state=Fan)


@fanout_graph.node
def root(state: Fan) -> dict[str, int]:
    return {"count": 1}


def _fan_part(name: str) -> None:
    def part(state: Fan) -> dict[str, list[int]]:
        return {"parts": [1]}

    part.__name__ = part.__qualname__ = name
    fanout_graph.node(part)


for _i in range(FAN_OUT):
    _fan_part(f"part{_i}")


@fanout_graph.node
def join(state: Fan) -> dict[str, int]:
    return {"count": state.count + len(state.parts)}


fanout_graph.entry(root)
fanout_graph.edge(root, [f"part{i}" for i in range(FAN_OUT)])
fanout_graph.edge([f"part{i}" for i in range(FAN_OUT)], join)


# -- profiling: BENCH_ENGINE_PROFILE=<dir> writes one cProfile file per pool process --------

if os.environ.get("BENCH_ENGINE_PROFILE"):
    import cProfile

    from celery.signals import worker_process_init, worker_process_shutdown

    _profiler = cProfile.Profile(time.process_time)

    @worker_process_init.connect
    def _start_profile(**_: Any) -> None:
        _profiler.enable()

    @worker_process_shutdown.connect
    def _dump_profile(**_: Any) -> None:
        _profiler.disable()
        _profiler.dump_stats(
            os.path.join(os.environ["BENCH_ENGINE_PROFILE"], f"{os.getpid()}.prof")
        )


# -- hop timing: BENCH_ENGINE_HOPS=<dir> (bench/engine.py --hops), see bench/hops.py ---------

if os.environ.get("BENCH_ENGINE_HOPS"):
    from bench import hops

    hops.install(os.environ["BENCH_ENGINE_HOPS"])
