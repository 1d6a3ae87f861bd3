"""Sending a visit on to a worker that has its run's version.

During a rolling deploy old and new workers consume one queue, so a visit can reach a worker
that does not define the version its run is pinned to. Each worker therefore also consumes
one queue per (routing key it consumes, version it serves), named by ``version_queue``: a
worker that lacks a visit's version publishes it there, where only workers that have the
version (and consume the visit's routing key) take it. It is a new message: nothing loops,
and a first delivery counts toward no poison cap (a redelivered one is sent on with a
redelivered message's checks). When no live worker has the version, the run stops for an
operator instead (engine/versions.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

from celery_durable.constants import TASK_PREFIX
from celery_durable.engine import versions
from celery_durable.engine.definition import GraphDefinition
from celery_durable.engine.runtime import Runtime
from celery_durable.tasks.consumer import Unknown
from celery_durable.tasks.message import Message

logger = logging.getLogger(__name__)


# A version queue no worker consumed for this long is deleted by RabbitMQ, so that queues of
# versions long retired do not pile up. A message left in one is healed like any lost message:
# the recovery sweep sends its visit again, and with no worker serving the version the run
# stops for an operator.
VERSION_QUEUE_EXPIRES_MS = 7 * 24 * 3600 * 1000


def version_queue(routing_key: str, graph: str, version: str) -> Queue:
    """The queue of ``routing_key``'s visits of ``graph``'s runs pinned to ``version``:
    declared alike by the workers that consume it and the workers that forward to it."""
    name = f"{routing_key}:{graph}@{version}"
    exchange = Exchange(name, type="direct")  # type: ignore[no-untyped-call]
    expires = {"x-expires": VERSION_QUEUE_EXPIRES_MS}
    return Queue(name, exchange, routing_key=name, queue_arguments=expires)  # type: ignore[no-untyped-call]


def consume_versions(app: Celery, definitions: list[GraphDefinition]) -> list[str]:
    """Make this worker consume the version queue of each routing key it consumes and each
    version it serves; returns those routing keys (what the fleet's rows record). Called
    once the worker selected its queues (worker_init), before it starts consuming."""
    queues = app.amqp.queues
    keys = sorted({q.routing_key or q.name for q in list(queues.consume_from.values())})
    for key in keys:
        for definition in definitions:
            queues.select_add(version_queue(key, definition.name, definition.version))
    return keys


@dataclass(frozen=True, slots=True)
class Delivery:
    """A task message as it came: what is sent on, unchanged, when it is forwarded."""

    task: str
    task_id: str
    args: list[Any]
    kwargs: dict[str, Any]
    routing_key: str | None
    # Delivered before: the copy sent on gets a redelivered message's checks (its visit may
    # have committed, and a poison message is still counted).
    redelivered: bool = False

    @classmethod
    def of(cls, request: Any) -> Delivery:
        info = request.delivery_info or {}
        return cls(
            request.task,
            request.id,
            list(request.args),
            dict(request.kwargs),
            info.get("routing_key"),
            bool(info.get("redelivered")),
        )


def elsewhere(
    app: Celery, runtime: Runtime, delivery: Delivery, graph: str, node: str, message: Message
) -> str:
    """A visit whose version this worker lacks: on to a live worker that has it on the
    message's routing key, or, with none, the run stops as needs_intervention."""
    version = message.base.cursor.graph_version
    assert version is not None, "a run without a version runs on the newest, always defined"
    key = delivery.routing_key or app.conf.task_default_queue
    if runtime.fleet.serving(graph, version, key):
        kwargs = {**delivery.kwargs, "recovered": True} if delivery.redelivered else delivery.kwargs
        app.send_task(
            delivery.task,
            args=delivery.args,
            kwargs=kwargs,
            task_id=delivery.task_id,
            queue=version_queue(key, graph, version),
            priority=message.base.cursor.priority,
            serializer="json",
        )
        logger.info(
            "%s: version %s of %s is not defined here; sent on to the workers that serve it",
            delivery.task_id,
            version,
            graph,
        )
        return "forwarded"
    versions.stop_missing(runtime, message.execution_id, graph, version, node)
    return "version missing"


def unregistered(app: Celery, runtime: Runtime) -> Unknown:
    """What the consumer does with a task of a graph this worker defines but of a node none
    of its versions has (tasks/consumer.py): a visit of a version it lacks."""

    def handle(
        task: str,
        task_id: str,
        args: list[Any],
        kwargs: dict[str, Any],
        key: str | None,
        redelivered: bool,
    ) -> bool:
        found = _graph_and_node(runtime, task)
        if found is None or len(args) != 2:
            return False
        graph, node = found
        message = Message.read(args[0], int(args[1]), kwargs, runtime.store.sealer)
        if message.base.cursor.graph_version is None:
            return False
        delivery = Delivery(task, task_id, args, kwargs, key, redelivered)
        elsewhere(app, runtime, delivery, graph, node, message)
        return True

    return handle


def _graph_and_node(runtime: Runtime, task: str) -> tuple[str, str] | None:
    for graph in runtime.graphs:
        prefix = f"{TASK_PREFIX}.{graph}."
        if task.startswith(prefix):
            return graph, task[len(prefix) :].removesuffix(".compensate")
    return None
