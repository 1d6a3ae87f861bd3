"""Saga: a graph whose steps run in declaration order and are undone, newest first, when
one fails for good or when someone asks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from celery_durable.saga.retry import RetryPolicy
from celery_durable.tasks.graph import Graph, Node

if TYPE_CHECKING:
    from celery_durable.durable import Durable


class Saga(Graph):
    """``@saga.step`` adds a step after the last one; ``@step.compensation`` says how to undo it."""

    def __init__(self, durable: Durable, name: str, state: type[BaseModel]) -> None:
        super().__init__(durable, name, state, on_failure="compensate")
        self._last: str | None = None

    def step(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        queue: str | None = None,
        compensate: Callable[..., Any] | None = None,
        compensation_retry: RetryPolicy | None = None,
        **unknown: Any,
    ) -> Any:
        """Decorator: ``@saga.step`` or ``@saga.step(retry=..., compensate=...)``."""
        return self.node(
            fn,
            name=name,
            retry=retry,
            timeout=timeout,
            queue=queue,
            compensate=compensate,
            compensation_retry=compensation_retry,
            **unknown,
        )

    def _added(self, node: Node[..., Any]) -> None:
        if self._last is None:
            self.entry(node)
        else:
            self.edge(self._last, node)
        self._last = node.name
