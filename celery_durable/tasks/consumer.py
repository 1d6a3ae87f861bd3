"""The worker's consumer, which also takes the node messages of versions this worker has never
heard of.

Versions of one graph share their nodes' task names, but a node that only another version
has (an inserted node, during a rolling deploy) has a task name this worker never
registered. Celery would log it as unregistered and drop the message; this consumer hands it
to the engine instead, as a visit of a version the worker lacks: it goes on to a worker that
has the version, or the run stops for an operator. Installed (``worker_consumer``) only where
the app uses Celery's own consumer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

from celery import Celery
from celery.app.defaults import DEFAULTS as CELERY_DEFAULTS
from celery.worker.consumer import Consumer

from celery_durable.constants import TASK_PREFIX

logger = logging.getLogger(__name__)

# A task message the worker has no task for: (name, id, args, kwargs, routing key,
# redelivered).
Unknown = Callable[[str, str, list[Any], dict[str, Any], str | None, bool], bool]
_handlers: WeakKeyDictionary[Celery, Unknown] = WeakKeyDictionary()

PATH = f"{__name__}:DurableConsumer"


def install(app: Celery, handler: Unknown) -> None:
    """Route ``app``'s unregistered durable task messages to ``handler`` (True: handled)."""
    _handlers[app] = handler
    if app.conf.get("worker_consumer") == CELERY_DEFAULTS["worker_consumer"]:
        app.conf.worker_consumer = PATH


class DurableConsumer(Consumer):  # type: ignore[misc]
    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        handler = _handlers.get(self.app)
        name = (message.headers or {}).get("task", "")
        if handler is not None and name.startswith(f"{TASK_PREFIX}."):
            try:
                args, kwargs, _ = message.decode()
                info = message.delivery_info or {}
                key, again = info.get("routing_key"), bool(info.get("redelivered"))
                if handler(name, message.headers["id"], list(args), dict(kwargs), key, again):
                    message.ack()
                    return
            except Exception:
                logger.exception("could not hand on %s, a task of no version here", name)
        super().on_unknown_task(body, message, exc)
