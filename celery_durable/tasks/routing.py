"""Where Celery sends a visit's message: the queue it asks for, the app's ``task_routes``,
Celery's default queue, worked out from the same inputs ``send_task`` gives its router.

The router sees the task's name, its args and kwargs, the options ``send_task`` is given
(under the task's own execution options) and the task. Routes that are all maps of task names
(Celery's ``MapRoute``: dicts, lists and tuples of them) read the name only, so where a name
asked for a queue goes is worked out once. A route that is a function, a router object, or
the dotted name of either may read the message itself: then every message is routed, and
where the next node's message would go is not known before it is built.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from celery import Celery
from celery.app.routes import MapRoute, Router
from celery.app.task import extract_exec_options
from celery.utils.collections import lpmerge

from celery_durable.engine.definition import GraphDefinition
from celery_durable.errors import UndeclaredName
from celery_durable.tasks.message import Address, Message, send_options

# send_task takes these out of the options before routing: they are the message's, not the
# route's (a time limit, an expiry, whether a result is kept).
_NOT_ROUTED = ("time_limit", "soft_time_limit", "expires", "ignore_result")


class Routes:
    """The app's router, asked as ``send_task`` asks it."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._router: tuple[Router, bool] | None = None
        self._destinations: dict[tuple[str, str | None], dict[str, Any]] = {}
        self._merged: dict[tuple[str, str | None], dict[str, Any]] = {}
        self._defaults: dict[str, dict[str, Any]] = {}

    def by_name(self) -> bool:
        """Whether routes depend on the task's name only: Celery's own router, every route a
        map. A function among them (given as itself or by name) may read args or kwargs."""
        return self._table()[1]

    def route(self, address: Address, message: Message) -> dict[str, Any]:
        """The options ``send_task`` would publish this message with (queue, exchange, routing
        key, priority, serializer, and the argsrepr and kwargsrepr the message carries): a dict
        of the caller's own."""
        router, by_name = self._table()
        if by_name:
            return self._by_name(address, message.base.cursor.priority)
        options = {**self._task_defaults(address.task), **send_options(address, message)}
        task = self.app.tasks.get(address.task)
        return dict(router.route(options, address.task, message.args(), message.kwargs(), task))

    def _by_name(self, address: Address, priority: int | None) -> dict[str, Any]:
        """What the maps give, then the options over it, as route() merges them (a None
        priority keeps the route's): worked out once per task and queue, not per message.
        The argsrepr and kwargsrepr go in the built message's headers, not here."""
        key = (address.task, address.queue)
        merged = self._merged.get(key)
        if merged is None:
            options = {**self._task_defaults(address.task), "serializer": "json"}
            merged = lpmerge(dict(self._destination(*key)), options)
            self._merged[key] = merged
        routed = dict(merged)
        if priority is not None:
            routed["priority"] = priority
        return routed

    def destination(self, task: str, queue: str | None) -> tuple[str, ...] | None:
        """The queue, exchange and routing key a message of ``task`` asking for ``queue``
        goes to; None when routes may read the message, which only its sending can tell."""
        if not self.by_name():
            return None
        route = self._destination(task, queue)
        return tuple(
            str(getattr(route.get(key), "name", route.get(key)))
            for key in ("queue", "exchange", "routing_key")
        )

    def _table(self) -> tuple[Router, bool]:
        """Celery's router and whether it routes by name alone, from their first use: Celery
        makes its router once too (``app.amqp.router``), from ``task_routes`` as they are then."""
        if self._router is None:
            router = self.app.amqp.router
            by_name = type(router) is Router and all(isinstance(r, MapRoute) for r in router.routes)
            self._router = (router, by_name)
        return self._router

    def _destination(self, task: str, queue: str | None) -> dict[str, Any]:
        """What routes by the name alone give a task asking for ``queue``, once."""
        found = self._destinations.get((task, queue))
        if found is None:
            found = self._table()[0].route({"queue": queue} if queue else {}, task)
            self._destinations[(task, queue)] = found
        return found

    def _task_defaults(self, task: str) -> dict[str, Any]:
        """The task's own execution options that are set, less those ``send_task`` takes out
        before routing: it routes our options over these."""
        found = self._defaults.get(task)
        if found is None:
            registered = self.app.tasks.get(task)
            found = {
                key: value
                for key, value in (extract_exec_options(registered) if registered else {}).items()
                if value is not None and key not in _NOT_ROUTED
            }
            self._defaults[task] = found
        return found


def check_queues(app: Celery, definitions: Iterable[GraphDefinition]) -> None:
    """Refuse a node queue the app does not declare where it does not create missing queues
    (``task_create_missing_queues=False``): Celery would refuse every message for it."""
    if app.conf.task_create_missing_queues:
        return
    declared = {queue.name for queue in app.amqp.queues.values()}
    for graph in definitions:
        for node in graph.nodes.values():
            if node.queue is not None and node.queue not in declared:
                raise UndeclaredName(
                    graph.name,
                    node.name,
                    "queue",
                    node.queue,
                    declared,
                    "Declare it in task_queues, or fix the name.",
                )
