"""Sending a built node message: on a producer this thread holds, else by ``send_task``.

The lean path publishes on a connection and producer of this thread's own (and of this
process's: a forked pool process makes its own), declares each queue once per connection, and
skips what ``send_task`` does on every call besides routing (take a producer from the pool,
declare the queue): about 130 us of CPU a message, against 290. Anything that goes wrong on it
(the broker restarted, the connection dropped) drops the held producer and sends the message
through ``send_task`` instead, with its reconnects and publish retries.
"""

from __future__ import annotations

import logging
import select
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from kombu.connection import Connection
from kombu.messaging import Producer

from celery_durable.forks import ThreadLocal
from celery_durable.tasks.message import Address, Message, send_options
from celery_durable.tasks.routing import Routes

logger = logging.getLogger(__name__)

# In the task message's headers already; send_task also copies them into its properties,
# which the lean path never did.
_HEADERS_ONLY = ("argsrepr", "kwargsrepr")


@dataclass
class _Held:
    """A thread's connection and producer, and the queues declared on that connection."""

    connection: Connection
    producer: Producer
    declared: set[str] = field(default_factory=set)


class HeldProducer:
    """Publishes built node messages on this thread's producer, falling back to send_task."""

    def __init__(self, app: Celery, routes: Routes) -> None:
        self.app = app
        self.routes = routes
        self._held = ThreadLocal(self._open)

    @property
    def connection(self) -> Connection | None:
        """The connection this thread holds, if it holds one."""
        held = self._held.peek()
        return None if held is None else held.connection

    def send(self, address: Address, message: Message, built: Any) -> None:
        """Publish ``built`` (``tasks.message.build``'s) on the held producer; if it is None (it
        could not be built) or that fails, drop the producer and go by ``send_task``."""
        if built is not None:
            try:
                self._publish(address, message, built)
                return
            except Exception as exc:  # whatever it was, send_task reconnects or raises
                logger.debug(
                    "held producer failed (%r); sending %s by send_task", exc, address.task_id
                )
                self._drop()
        self.send_task(address, message)

    def _publish(self, address: Address, message: Message, built: Any) -> None:
        """The lean path; raises whatever went wrong, the message not sent."""
        held = self._held.get()
        _check(held.connection)
        options = self.routes.route(address, message)
        for header in _HEADERS_ONLY:
            options.pop(header, None)
        # No priority is None on the wire, where kombu's own default would say 0.
        options.setdefault("priority", None)
        key = getattr(options.get("queue"), "name", None) or str(options.get("routing_key"))
        first = key not in held.declared
        self.app.amqp.send_task_message(
            held.producer,
            address.task,
            built,
            retry=False,
            declare=None if first else [],
            **options,
        )
        held.declared.add(key)

    def send_task(self, address: Address, message: Message, countdown: float | None = None) -> None:
        """Celery's own way, with its reconnects and publish retries."""
        self.app.send_task(
            address.task,
            args=message.args(),
            kwargs=message.kwargs(),
            countdown=countdown,
            task_id=address.task_id,
            **send_options(address, message),
        )

    def _drop(self) -> None:
        """Let go of this thread's producer and connection: the next message opens anew."""
        held = self._held.clear()
        if held is not None:
            _release(held.connection)

    def _open(self) -> _Held:
        connection = self.app.connection_for_write()
        try:
            producer = self.app.amqp.Producer(connection.default_channel, auto_declare=False)
        except Exception:
            _release(connection)
            raise
        return _Held(connection, producer)


def _release(connection: Connection) -> None:
    try:
        connection.release()  # type: ignore[no-untyped-call]
    except Exception:  # a dead connection: nothing to give back
        logger.debug("dropping a broken producer connection", exc_info=True)


def _check(connection: Connection) -> None:
    """Raise if the broker closed this connection: a connection that only publishes reads
    nothing, so a close (a broker restart, missed heartbeats) would otherwise go unseen and
    the next message into the dead socket be lost. A poll of the socket, and a read only when
    the broker sent something (a close, a heartbeat)."""
    if not connection.connected:
        raise ConnectionError("the held connection is closed")
    sock = getattr(connection.connection, "sock", None)
    if sock is not None and hasattr(select, "poll"):  # gone under eventlet: read, as before
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if not poller.poll(0):
            return
    try:
        connection.drain_events(timeout=0)  # type: ignore[no-untyped-call]
    except TimeoutError:
        return
