"""Saga: a graph whose steps run in declaration order and are undone, newest first, when
one fails for good or when someone asks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from pydantic import BaseModel

from celery_durable.saga.retry import RetryPolicy
from celery_durable.tasks.graph import Graph, Node

if TYPE_CHECKING:
    from celery_durable.durable import Durable

P = ParamSpec("P")
R = TypeVar("R")


class Saga(Graph):
    """``@saga.step`` adds a step after the last one; ``@step.compensation`` says how to undo it."""

    def __init__(self, durable: Durable, name: str, state: type[BaseModel]) -> None:
        super().__init__(durable, name, state, on_failure="compensate")
        self._last: str | None = None

    @overload
    def step(self, fn: Callable[P, R], /) -> Node[P, R]: ...

    @overload
    def step(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        queue: str | None = None,
        compensate: Callable[..., Any] | None = None,
        compensation_retry: RetryPolicy | None = None,
        **unknown: Any,
    ) -> Callable[[Callable[P, R]], Node[P, R]]: ...

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
        decorate: Callable[[Callable[..., Any]], Node[..., Any]] = self.node(
            name=name,
            retry=retry,
            timeout=timeout,
            queue=queue,
            compensate=compensate,
            compensation_retry=compensation_retry,
            **unknown,
        )
        return decorate(fn) if fn is not None else decorate

    def _added(self, node: Node[..., Any]) -> None:
        if self._last is None:
            self.entry(node)
        else:
            self.edge(self._last, node)
        self._last = node.name
