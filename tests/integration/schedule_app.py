"""The app of the schedules' integration test (``celery -A tests.integration.schedule_app``),
run by a worker and by beats alike, as in a deployment.

Configured by the same environment as ``tests.integration.app`` (broker, database, queue,
ledger), and DURABLE_TEST_CRON: the cron of its one schedule, ``ticker``, which starts the
graph ``tick``. Its node appends ``ran <execution id> <pid>`` to the ledger, so the test
counts what ran, not only what was stored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from celery import Celery
from pydantic import BaseModel

from celery_durable import Context, Durable, Graph, Schedule

DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"
SCHEDULE = "ticker"


class Tick(BaseModel):
    note: str = ""
    ran: bool = False


@dataclass
class ScheduleApp:
    app: Celery
    durable: Durable
    tick: Graph
    schedule: Schedule


def build() -> ScheduleApp:
    queue = os.environ.get("DURABLE_TEST_QUEUE", "durable-schedule-tests")
    app = Celery("durable_schedules", broker=os.environ.get("CELERY_BROKER_URL", DEFAULT_BROKER))
    app.conf.update(
        # Node tasks and the tick task alike: only this test's worker takes them.
        task_default_queue=queue,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    durable = Durable(app)
    tick = durable.graph("tick", state=Tick)

    @tick.node
    def record(state: Tick, ctx: Context) -> dict[str, bool]:
        path = os.environ.get("DURABLE_TEST_LEDGER")
        if path:
            with open(path, "a") as out:
                out.write(f"ran {ctx.execution_id} {os.getpid()}\n")
        return {"ran": True}

    tick.entry(record)
    cron = os.environ.get("DURABLE_TEST_CRON", "*/2 * * * * *")
    schedule = durable.schedule(tick, cron, kwargs={"note": "from beat"}, name=SCHEDULE)
    return ScheduleApp(app, durable, tick, schedule)


built = build()
app = built.app
