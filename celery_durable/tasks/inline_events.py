"""Celery task events for nodes a worker ran inline, so that Flower lists every node.

A node run inline has no message of its own, so the worker that ran it sends the events a
message would have produced (received, started, succeeded or failed) under the id the node's
message would have had. Only when the worker sends task events itself (``celery worker -E``):
a child process cannot see Flower's later ``enable_events``, so start workers with ``-E``.
"""

from __future__ import annotations

import traceback
from typing import Any

from celery import Celery

from celery_durable.engine.attempt import Attempt, Outcome
from celery_durable.tasks.message import Message, task_id


class InlineEvents:
    """Sends task events for inline node runs when the worker has task events on."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.enabled = False

    def started(self, run: Attempt, request: Any) -> None:
        if self.enabled:
            self._send(
                request,
                ("task-received", self._received_fields(run, request)),
                ("task-started", {"uuid": self._id(run)}),
            )

    def finished(
        self,
        run: Attempt,
        request: Any,
        seconds: float,
        outcome: Outcome | None,
        exc: BaseException | None,
    ) -> None:
        if not self.enabled:
            return
        exc = exc or run.failed
        if exc is None:
            fields = {"result": repr(str(outcome)), "runtime": seconds}
            self._send(request, ("task-succeeded", {"uuid": self._id(run), **fields}))
            return
        tb = "".join(traceback.format_exception(exc, limit=8))
        fields = {"exception": repr(exc), "traceback": tb}
        kind = "task-retried" if outcome == Outcome.RETRYING else "task-failed"
        self._send(request, (kind, {"uuid": self._id(run), **fields}))

    @staticmethod
    def _id(run: Attempt) -> str:
        return task_id(run.execution_id, run.name, run.visit, run.attempt, False)

    def _received_fields(self, run: Attempt, request: Any) -> dict[str, Any]:
        message = Message(run.execution_id, run.visit, run.base, run.attempt)
        return {
            "uuid": self._id(run),
            "name": run.graph.nodes[run.name].task_name,
            "args": message.argsrepr(),
            "kwargs": message.kwargsrepr(inline=True),
            "retries": 0,
            "eta": None,
            "expires": None,
            "root_id": request.root_id or request.id,
            "parent_id": request.id,
        }

    def _send(self, request: Any, *events: tuple[str, dict[str, Any]]) -> None:
        with self.app.events.default_dispatcher(hostname=request.hostname) as dispatcher:
            for kind, fields in events:
                dispatcher.send(kind, **fields)
