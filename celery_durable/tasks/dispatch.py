"""Handing visits on through Celery: where a node's message goes, whether the next node may
run inline instead, and revoking what is in flight.

A node message is built while the commit that makes it due is in flight (``prepare``: Celery's
own task message) and sent once that commit answered (``Publication.send``), on the producer
this thread holds (``tasks.producer``). A countdown (a retry's delay) always goes by
``send_task``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celery import Celery

from celery_durable.constants import TASK_PREFIX
from celery_durable.engine.base import Base
from celery_durable.engine.definition import Catalog, GraphDefinition, NodeDefinition
from celery_durable.persistence.sealing import Sealer
from celery_durable.tasks.message import Address, Message, build, task_id
from celery_durable.tasks.producer import HeldProducer
from celery_durable.tasks.routing import Routes

logger = logging.getLogger(__name__)


class CeleryDispatcher:
    """The engine's Dispatcher on a Celery app."""

    def __init__(self, app: Celery, graphs: Catalog, sealer: Sealer | None = None) -> None:
        self.app = app
        self.graphs = graphs
        self.sealer = sealer
        self.routes = Routes(app)
        self.producer = HeldProducer(app, self.routes)

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
        message = Message(execution_id, visit, base, attempt, recovered, passed, self.sealer)
        address = self._address(graph, node, message, compensation)
        if countdown is not None:
            self.producer.send_task(address, message, countdown)
        else:
            self._publication(address, message).send()

    def prepare(
        self, graph: str, node: str, visit: int, execution_id: str, base: Base
    ) -> Publication:
        message = Message(execution_id, visit, base, sealer=self.sealer)
        return self._publication(self._address(graph, node, message, False), message)

    def may_inline(
        self, graph: GraphDefinition, here: str, there: str, run_queue: str | None
    ) -> bool:
        """Only where ``there``'s message would go where ``here``'s went (node queues, the
        run's queue, the app's task_routes; never where a route may read the message) and no
        Celery time or rate limit applies to either task (a node's ``timeout=`` is enforced
        per node by the engine, not by Celery): inline, a limit would cover several nodes or
        be skipped."""
        first, second = graph.nodes[here], graph.nodes[there]
        if not (self._unlimited(first) and self._unlimited(second)):
            return False
        went = self.routes.destination(first.task_name, first.queue or run_queue)
        goes = self.routes.destination(second.task_name, second.queue or run_queue)
        return went is not None and went == goes

    def revoke(self, execution_id: str, visits: Iterable[tuple[str, int, int]]) -> None:
        ids = [
            task_id(execution_id, node, visit, attempt)
            for node, visit, attempts in visits
            for attempt in range(1, attempts + 2)
        ]
        if ids:
            self.app.control.revoke(ids)

    def _address(self, graph: str, node: str, message: Message, compensation: bool) -> Address:
        """The node of the run's own version; where this process does not define that version
        (an operator's command run from newer code), its task by name on the run's queue: a
        worker that has the version takes it from there (tasks/forwarding.py)."""
        cursor = message.base.cursor
        definition = self.graphs.at(graph, cursor.graph_version)
        target = definition.nodes.get(node) if definition is not None else None
        if target is None:
            name = f"{TASK_PREFIX}.{graph}.{node}"
            name = f"{name}.compensate" if compensation else name
            return Address(name, cursor.queue, message.task_id(node, compensation))
        name = target.compensation_task_name if compensation else target.task_name
        return Address(name, target.queue or cursor.queue, message.task_id(node, compensation))

    def _publication(self, address: Address, message: Message) -> Publication:
        """Building fails only where sending would (an unknown route): then the message goes
        by send_task, which says what is wrong."""
        try:
            built = build(self.app, address, message)
        except Exception as exc:
            logger.debug("could not build %s (%r); it goes by send_task", address.task_id, exc)
            built = None
        return Publication(self.producer, address, message, built)

    def _unlimited(self, node: NodeDefinition) -> bool:
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


@dataclass(frozen=True, slots=True)
class Publication:
    """One visit's message, built (``CeleryDispatcher.prepare``), sent by ``send()``.

    Built while the commit that makes it due is in flight, and sent once that commit has
    answered, it costs the hop only the send.
    """

    producer: HeldProducer
    address: Address
    message: Message
    # Celery's task message, or None where it could not be built.
    built: Any

    def send(self) -> None:
        self.producer.send(self.address, self.message, self.built)
