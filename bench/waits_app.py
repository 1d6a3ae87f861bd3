"""The app bench/waits.py runs: one node that sleeps durably, then says when it woke.

    celery -A bench.waits_app:app worker -P prefork -c 1 ...

BENCH_WAITS_BROKER (default amqp://guest:guest@127.0.0.1:5672//), BENCH_WAITS_QUEUE and
CELERY_DURABLE_DATABASE_URL (a throwaway database) configure it.
"""

from __future__ import annotations

import os
import time

from celery import Celery
from pydantic import BaseModel

from celery_durable import Context, Durable

app = Celery(
    "bench_waits",
    broker=os.environ.get("BENCH_WAITS_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
)
app.conf.update(
    task_default_queue=os.environ.get("BENCH_WAITS_QUEUE", "bench-waits"),
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
durable = Durable(app)


class Nap(BaseModel):
    sleep: float = 5.0
    woke: float = 0.0


nap = durable.graph("bench_nap", state=Nap)


@nap.node
def doze(state: Nap, ctx: Context) -> dict[str, float]:
    ctx.sleep(state.sleep)
    return {"woke": time.time()}


nap.entry(doze)
