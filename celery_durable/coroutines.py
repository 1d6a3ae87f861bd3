"""``async def`` user functions: nodes, compensations, routers and ``ctx.step`` functions.

Celery calls a task body synchronously, so the engine runs what such a function returns, a
coroutine, to its end before it looks at the result: on an event loop the calling thread
keeps for its whole life (made once per thread of each process, so a prefork child never
shares its parent's). Timeouts, retries, waits and crashes are then as for a plain function:
a soft time limit raises NodeTimeout wherever the loop is, and the coroutine is cancelled;
a wait (``ctx.sleep``) ends it as it ends a plain node.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Awaitable
from typing import Any, TypeVar, cast

from celery_durable.forks import ThreadLocal

T = TypeVar("T")

_loops: ThreadLocal[asyncio.AbstractEventLoop] = ThreadLocal(asyncio.new_event_loop)


def settled(value: T | Awaitable[T]) -> T:
    """``value``, or, when it is awaitable (an ``async def`` function was called), what it
    comes to."""
    if not inspect.isawaitable(value):
        return value
    awaitable = cast(Awaitable[T], value)
    loop = _loops.get()
    if loop.is_running():
        # Called from inside an async node (a sync ctx.step given an async function): its
        # own loop is busy, so this one runs to its end on a loop of its own thread.
        return _elsewhere(awaitable)
    task = loop.create_task(_awaited(awaitable))
    try:
        return loop.run_until_complete(task)
    except BaseException:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(task)
        raise


async def _awaited(value: Awaitable[T]) -> T:
    return await value


def _elsewhere(value: Awaitable[T]) -> T:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = asyncio.run(_awaited(value))
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="durable-coroutine", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    result: T = outcome["value"]
    return result
