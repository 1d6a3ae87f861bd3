"""The message of a node or compensation visit, both ways: what is sent, what a task reads.

Only JSON travels. A message carries the committed state and version its visit runs on, so
the happy path reads nothing before running. Task ids say what they run
(``<execution>.<node>.<visit>.<attempt>``), so Flower can be searched by execution id and a
cancel can revoke what is in flight without having stored anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery_durable.engine.base import Base
from celery_durable.model.cursor import Cursor
from celery_durable.status import Status


def task_id(
    execution_id: str, node: str, visit: int, attempt: int, compensation: bool = False
) -> str:
    suffix = ".compensate" if compensation else ""
    return f"{execution_id}.{node}{suffix}.{visit}.{attempt}"


@dataclass(frozen=True, slots=True)
class Message:
    execution_id: str
    visit: int
    base: Base
    attempt: int = 1
    # Sent by the recovery sweep or after a crash: gets a redelivered message's checks.
    recovered: bool = False
    # Sent again after a flow control hold: what held it ("rate stripe"), its turn now taken.
    passed: str | None = None

    @classmethod
    def read(cls, execution_id: str, visit: int, kwargs: dict[str, Any]) -> Message:
        base = Base(
            kwargs["version"],
            kwargs["state"],
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
        kwargs: dict[str, Any] = {
            "version": base.version,
            "state": base.state,
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
