"""What the engine tells, told to the outside: the Celery signals celery-durable sends
(signals.py), then the user's hooks, chained behind (``inner``, with metrics in front)."""

from __future__ import annotations

from typing import Any

from celery_durable import signals
from celery_durable.hooks import Hooks
from celery_durable.model.records import ErrorRecord
from celery_durable.status import Status


class Relay(Hooks):
    """The hooks the engine calls; ``sender``: the Durable the signals name."""

    def __init__(self, sender: Any) -> None:
        self.sender = sender

    def execution_finished(self, execution_id: str, graph: str, status: Status) -> None:
        signals.execution_finished.send(
            sender=self.sender, execution_id=execution_id, graph=graph, status=status
        )

    def execution_started(self, execution_id: str, graph: str, version: str | None) -> None:
        signals.execution_started.send(
            sender=self.sender, execution_id=execution_id, graph=graph, version=version
        )

    def node_failed(self, execution_id: str, graph: str, node: str, error: dict[str, Any]) -> None:
        signals.node_failed.send(
            sender=self.sender, execution_id=execution_id, graph=graph, node=node, error=error
        )

    def node_slow(self, execution_id: str, graph: str, node: str, seconds: float) -> None:
        signals.node_slow.send(
            sender=self.sender, execution_id=execution_id, graph=graph, node=node, seconds=seconds
        )

    def execution_stuck(self, execution_id: str, graph: str, idle: float) -> None:
        signals.execution_stuck.send(
            sender=self.sender, execution_id=execution_id, graph=graph, idle=idle
        )

    def announce_intervention(
        self, execution_id: str, graph: str, step: str, error: ErrorRecord
    ) -> None:
        """The signal, with the error the hook does not carry, then the hook."""
        signals.intervention_required.send(
            sender=self.sender, execution_id=execution_id, step=step, error=error
        )
        self.intervention_required(execution_id, graph, step)
