"""The message of a node or compensation visit, both ways: what is sent (Celery's task
message, protocol 2, built here for either way of sending it), what a task reads.

Only JSON travels. A message carries the committed state and version its visit runs on, so
the happy path reads nothing before running. With encryption at rest on, the state travels
sealed as it is stored (RabbitMQ writes messages to disk too), and Flower shows it sealed.
Task ids say what they run (``<execution>.<node>.<visit>.<attempt>``), so Flower can be
searched by execution id and a cancel can revoke what is in flight without having stored
anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from celery_durable.engine.base import Base
from celery_durable.model.cursor import Cursor
from celery_durable.persistence import codec
from celery_durable.persistence.sealing import Sealer
from celery_durable.status import Status


def task_id(
    execution_id: str, node: str, visit: int, attempt: int, compensation: bool = False
) -> str:
    suffix = ".compensate" if compensation else ""
    return f"{execution_id}.{node}{suffix}.{visit}.{attempt}"


@dataclass(frozen=True, slots=True)
class Address:
    """Where a visit's message goes and under which id: its task, the queue it asks for (None:
    the app's task_routes, else Celery's default queue) and its task id."""

    task: str
    queue: str | None
    task_id: str


@dataclass(frozen=True, slots=True)
class Message:
    """A visit's message as the wire carries it; ``read`` is the inverse of ``args`` and
    ``kwargs``."""

    execution_id: str
    visit: int
    base: Base
    attempt: int = 1
    # Sent by the recovery sweep or after a crash: gets a redelivered message's checks.
    recovered: bool = False
    # Sent again after a flow control hold: what held it ("rate stripe"), its turn now taken.
    passed: str | None = None
    # Seals the state on the way out when encryption at rest is on.
    sealer: Sealer | None = field(default=None, compare=False, repr=False)

    @classmethod
    def read(
        cls, execution_id: str, visit: int, kwargs: dict[str, Any], sealer: Sealer | None = None
    ) -> Message:
        state = kwargs["state"]
        if isinstance(state, str):  # sealed
            state = codec.loads((sealer or Sealer()).open(state, execution_id))
        base = Base(
            kwargs["version"],
            state,
            Cursor.from_json(kwargs["cursor"]),
            Status(kwargs.get("status", Status.RUNNING)),
        )
        return cls(
            execution_id,
            visit,
            base,
            int(kwargs.get("attempt", 1)),
            bool(kwargs.get("recovered", False)),
            kwargs.get("passed"),
        )

    def task_id(self, node: str, compensation: bool = False) -> str:
        return task_id(self.execution_id, node, self.visit, self.attempt, compensation)

    def args(self) -> tuple[str, int]:
        return (self.execution_id, self.visit)

    def kwargs(self) -> dict[str, Any]:
        base = self.base
        state: Any = base.state
        if self.sealer is not None and self.sealer.active is not None:
            state = self.sealer.seal(codec.dumps(state), self.execution_id)
        kwargs: dict[str, Any] = {
            "version": base.version,
            "state": state,
            "cursor": base.cursor.to_json(),
            "attempt": self.attempt,
        }
        if self.recovered:
            kwargs["recovered"] = True
        if self.passed is not None:
            kwargs["passed"] = self.passed
        if base.status != Status.RUNNING:
            kwargs["status"] = str(base.status)
        return kwargs

    def argsrepr(self) -> str:
        return f"({self.execution_id!r}, visit={self.visit})"

    def kwargsrepr(self, inline: bool = False) -> str:
        extra = ", inline=True" if inline else ""
        return f"{{version={self.base.version}, attempt={self.attempt}{extra}}}"


def send_options(address: Address, message: Message) -> dict[str, Any]:
    """What ``send_task`` is given besides the task's name, args, kwargs and id: the router
    sees these on either path, so both paths route a message alike."""
    return {
        "queue": address.queue,
        "priority": message.base.cursor.priority,
        "serializer": "json",
        "argsrepr": message.argsrepr(),
        "kwargsrepr": message.kwargsrepr(),
    }


def build(app: Celery, address: Address, message: Message) -> Any:
    """Celery's task message (headers, properties, body, sent event) as ``send_task`` would
    build it, its parent and root the task running now: built ahead, for the held producer
    to send once the commit that makes it due answered."""
    parent = app.current_worker_task
    request = parent.request if parent is not None else None
    return app.amqp.create_task_message(
        address.task_id,
        address.task,
        message.args(),
        message.kwargs(),
        root_id=request and (request.root_id or request.id),
        parent_id=request and request.id,
        create_sent_event=app.conf.task_send_sent_event,
        ignore_result=True,
        argsrepr=message.argsrepr(),
        kwargsrepr=message.kwargsrepr(),
    )
