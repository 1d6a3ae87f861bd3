"""Handing visits on through Celery: where a node's message goes, whether the next node may
run inline instead, publishing, and revoking what is in flight."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from celery import Celery

from celery_durable.engine.base import Base
from celery_durable.tasks.graph import Graph, Node
from celery_durable.tasks.message import Message, task_id


class CeleryDispatcher:
    """The engine's Dispatcher on a Celery app."""

    def __init__(self, app: Celery, graphs: Mapping[str, Graph]) -> None:
        self.app = app
        self.graphs = graphs

    def dispatch(
        self,
        graph: str,
        node: str,
        visit: int,
        execution_id: str,
        base: Base,
        *,
        attempt: int = 1,
        countdown: float | None = None,
        compensation: bool = False,
        recovered: bool = False,
        passed: str | None = None,
    ) -> None:
        target = self.graphs[graph].nodes[node]
        message = Message(execution_id, visit, base, attempt, recovered, passed)
        self.app.send_task(
            target.compensation_task_name if compensation else target.task_name,
            args=message.args(),
            kwargs=message.kwargs(),
            queue=target.queue or base.cursor.queue,
            countdown=countdown,
            priority=base.cursor.priority,
            task_id=task_id(execution_id, node, visit, attempt, compensation),
            serializer="json",
            argsrepr=message.argsrepr(),
            kwargsrepr=message.kwargsrepr(),
        )

    def may_inline(self, graph: str, here: str, there: str, run_queue: str | None) -> bool:
        """Only where ``there``'s message would go where ``here``'s went (node queues, the
        run's queue, the app's task_routes) and no Celery time or rate limit applies to either
        task (a node's ``timeout=`` is enforced per node by the engine, not by Celery):
        inline, a limit would cover several nodes or be skipped."""
        nodes = self.graphs[graph].nodes
        first, second = nodes[here], nodes[there]
        return (
            self._unlimited(first)
            and self._unlimited(second)
            and self._destination(first, run_queue) == self._destination(second, run_queue)
        )

    def revoke(self, execution_id: str, visits: Iterable[tuple[str, int, int]]) -> None:
        ids = [
            task_id(execution_id, node, visit, attempt)
            for node, visit, attempts in visits
            for attempt in range(1, attempts + 2)
        ]
        if ids:
            self.app.control.revoke(ids)

    def _destination(self, node: Node[..., Any], run_queue: str | None) -> tuple[str, ...]:
        """The node's queue, else the run's, else what task_routes say, else the default."""
        explicit = node.queue or run_queue
        route = self.app.amqp.router.route({"queue": explicit} if explicit else {}, node.task_name)
        return tuple(
            str(getattr(route.get(key), "name", route.get(key)))
            for key in ("queue", "exchange", "routing_key")
        )

    def _unlimited(self, node: Node[..., Any]) -> bool:
        """No Celery time limit or rate limit on the task (annotations and app-wide included)."""
        task = self.app.tasks[node.task_name]
        conf = self.app.conf
        return not (
            task.time_limit
            or task.soft_time_limit
            or task.rate_limit
            or conf.task_time_limit
            or conf.task_soft_time_limit
        )
