"""``async def`` nodes, compensations, routers and step functions: run to their end on the
thread's event loop, with the timeouts, retries and waits of plain functions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest
from pydantic import BaseModel

from celery_durable import Compensated, Context, Durable, RetryPolicy, Status
from celery_durable.coroutines import settled
from celery_durable.engine.deadline import time_limit
from celery_durable.errors import NodeTimeout
from celery_durable.testing import fast_forward

Worker = Callable[[], AbstractContextManager[object]]


class S(BaseModel):
    n: int = 0
    path: list[str] = []


def test_an_async_graph_runs_like_a_plain_one(durable: Durable, worker: Worker) -> None:
    g = durable.graph("aio", state=S)

    async def fetch(x: int) -> int:
        await asyncio.sleep(0.001)
        return x * 10

    @g.node
    async def a(state: S, ctx: Context) -> dict[str, object]:
        await asyncio.sleep(0.001)
        fetched = ctx.step("fetch", fetch, 4)
        return {"n": fetched, "path": ["a"]}

    @g.node
    async def big(state: S) -> dict[str, object]:
        return {"path": [*state.path, "big"]}

    @g.node
    def small(state: S) -> dict[str, object]:
        return {"path": [*state.path, "small"]}

    async def route(state: S) -> str:
        await asyncio.sleep(0.001)
        return "big" if state.n > 10 else "small"

    g.entry(a)
    g.branch(a, route, [big, small])
    with worker():
        run = g.delay()
        final = run.wait(timeout=10)
    assert final.model_dump() == {"n": 40, "path": ["a", "big"]}
    steps = [cp for cp in run.history() if cp.kind == "step"]
    assert [cp.output for cp in steps] == [40]


def test_an_async_node_that_raises_is_retried(durable: Durable, worker: Worker) -> None:
    g = durable.graph("flaky_aio", state=S)
    calls: list[int] = []

    @g.node(retry=RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=False))
    async def flaky(state: S) -> dict[str, int]:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not yet")
        return {"n": len(calls)}

    g.entry(flaky)
    with worker():
        assert g.delay().wait(timeout=10).n == 3  # type: ignore[attr-defined]


def test_an_async_node_waits_durably(durable: Durable, worker: Worker) -> None:
    g = durable.graph("sleepy_aio", state=S)

    @g.node
    async def nap(state: S, ctx: Context) -> dict[str, int]:
        ctx.sleep(3600)
        return {"n": 1}

    g.entry(nap)
    with worker():
        run = g.delay()
        deadline = time.monotonic() + 5
        while run.status != Status.WAITING and time.monotonic() < deadline:
            time.sleep(0.01)
        assert run.status == Status.WAITING
        fast_forward(durable, 3601)
        assert run.wait(timeout=10).n == 1  # type: ignore[attr-defined]


def test_an_async_compensation_undoes_its_step(durable: Durable, worker: Worker) -> None:
    s = durable.saga("aio_saga", state=S)
    undone: list[int] = []

    @s.step
    async def reserve(state: S) -> dict[str, int]:
        return {"n": 5}

    @reserve.compensation
    async def release(state: S) -> None:
        await asyncio.sleep(0.001)
        undone.append(state.n)

    @s.step
    def charge(state: S) -> None:
        raise ValueError("card declined")

    with worker(), pytest.raises(Compensated):
        s.delay().wait(timeout=10)
    assert undone == [5]


def test_the_soft_limit_ends_an_async_node_and_cancels_it() -> None:
    cancelled: list[bool] = []

    async def crawl() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    started = time.monotonic()
    with pytest.raises(NodeTimeout), time_limit("crawl", 0.05):
        settled(crawl())
    assert time.monotonic() - started < 1 and cancelled == [True]
    assert settled(asyncio.sleep(0, result=7)) == 7  # the thread's loop is still usable


def test_a_plain_value_is_left_alone() -> None:
    assert settled({"n": 1}) == {"n": 1}
