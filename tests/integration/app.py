"""The app the integration tests' worker subprocesses run (``celery -A tests.integration.app``).

Configured by environment, like a deployment: CELERY_BROKER_URL, CELERY_DURABLE_DATABASE_URL,
DURABLE_TEST_QUEUE (a queue per test run), DURABLE_TEST_LEDGER (a file every node run appends
to, so tests can count side effects, including the runs whose commit never happened). Chain
nodes write ``<execution> <node> <visit> start|done <pid>``, items ``<execution> item <i>``.

``build()`` makes a fresh app, Durable and graphs from the environment as it is now: the worker
uses the module-level one built at import, the test process builds one per test (after setting
the test's database and queue in the environment) so both sides agree.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from dataclasses import dataclass

from celery import Celery
from pydantic import BaseModel

from celery_durable import Context, Durable, Graph, RetryPolicy

DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"
CHAIN_NODES = ("n1", "n2", "n3", "n4", "n5")


def ledger(*parts: object) -> None:
    path = os.environ.get("DURABLE_TEST_LEDGER")
    if path:
        with open(path, "a") as out:
            out.write(" ".join(str(p) for p in parts) + "\n")


class Work(BaseModel):
    count: int = 0
    sleep_at: str = ""
    sleep: float = 0.0
    trail: list[str] = []


class Items(BaseModel):
    total: int = 100
    item_sleep: float = 0.02
    done: int = 0


class Poison(BaseModel):
    ran: bool = False


@dataclass(frozen=True)
class DurableApp:
    """One Celery app with its Durable and the test graphs."""

    app: Celery
    durable: Durable
    queue: str
    chain: Graph
    items: Graph
    poison: Graph


def build() -> DurableApp:
    queue = os.environ.get("DURABLE_TEST_QUEUE", "durable-tests")
    app = Celery("durable_tests", broker=os.environ.get("CELERY_BROKER_URL", DEFAULT_BROKER))
    app.conf.update(
        task_default_queue=queue,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    durable = Durable(app)
    return DurableApp(
        app=app,
        durable=durable,
        queue=queue,
        chain=_chain(durable),
        items=_items(durable),
        poison=_poison(durable),
    )


def _chain(durable: Durable) -> Graph:
    """n1 -> n2 -> n3 -> n4 -> n5; each appends start/done lines; ``sleep_at`` is slow."""
    chain = durable.graph("chain", state=Work)

    def make(name: str) -> None:
        def node(state: Work, ctx: Context) -> dict[str, object]:
            ledger(ctx.execution_id, name, ctx.visit, "start", os.getpid())
            if state.sleep_at == name:
                time.sleep(state.sleep)
            ledger(ctx.execution_id, name, ctx.visit, "done", os.getpid())
            return {"count": state.count + 1, "trail": [*state.trail, name]}

        node.__name__ = name
        chain.node(node)

    for name in CHAIN_NODES:
        make(name)
    chain.entry("n1")
    for a, b in itertools.pairwise(CHAIN_NODES):
        chain.edge(a, b)
    return chain


def _items(durable: Durable) -> Graph:
    items = durable.graph("items", state=Items)

    @items.node(retry=RetryPolicy(max_attempts=2, initial_delay=0.1))
    def loop(state: Items, ctx: Context) -> dict[str, int]:
        """Processes items one sub-step each; a crash resumes at the first uncommitted item."""

        def process(i: int) -> int:
            ledger(ctx.execution_id, "item", i)
            time.sleep(state.item_sleep)
            return i

        done = [ctx.step(f"item-{i}", process, i) for i in range(state.total)]
        return {"done": len(done)}

    items.entry(loop)
    return items


def _poison(durable: Durable) -> Graph:
    poison = durable.graph("poison", state=Poison)

    @poison.node
    def explode(state: Poison, ctx: Context) -> dict[str, bool]:
        """Kills the pool process running it, every time: a message no worker survives."""
        ledger(ctx.execution_id, "explode", ctx.visit, "start")
        # Die mid-work, as a crashing node does: a child that dies the instant it receives a
        # job leaves the pool unsure it ever started it, and billiard then waits seconds
        # (worker_lost_wait) before it gives the job up and the message is requeued.
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)
        return {"ran": True}  # pragma: no cover - never reached

    poison.entry(explode)
    return poison


# What `celery -A tests.integration.app worker` runs.
_default = build()
app = _default.app
durable = _default.durable
chain = _default.chain
items = _default.items
poison = _default.poison
