"""Hooks for cross-cutting concerns (metrics, alerts, audit): no-ops unless overridden.

Subclass Hooks and pass an instance as ``Durable(app, hooks=...)``; the engine calls them
after the fact they describe is committed, never inside a transaction.
"""

from __future__ import annotations

from celery_durable.persistence.records import Commit
from celery_durable.status import Status


class Hooks:
    """Callbacks for metrics, alerts and audit; every method is a no-op until overridden."""

    def node_committed(self, graph: str, node: str, commit: Commit) -> None:
        """A node visit committed."""

    def checkpoint_written(self, graph: str, node: str, kind: str, seconds: float) -> None:
        """A checkpoint commit (kind: node, compensation, failure, ...) took ``seconds``."""

    def attempt_finished(self, graph: str, node: str, kind: str, seconds: float) -> None:
        """One attempt of a node or compensation (``kind``) ran for ``seconds``: the function,
        its commit and what it handed on, whether in a task of its own or inline."""

    def node_retrying(self, graph: str, node: str, error: BaseException, delay: float) -> None:
        """A node attempt failed and will run again after ``delay`` seconds."""

    def execution_finished(self, execution_id: str, graph: str, status: Status) -> None:
        """An execution reached a final status."""

    def intervention_required(self, execution_id: str, graph: str, step: str) -> None:
        """A compensation failed for good; the run waits for an operator."""

    def recovered(self, execution_id: str, node: str, reason: str) -> None:
        """The recovery sweep dispatched a node again (``reason``: 'due' or 'stale')."""
