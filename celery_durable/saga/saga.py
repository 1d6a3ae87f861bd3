"""Saga: a graph whose steps run in declaration order and are undone, newest first, when
one fails for good or when someone asks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from celery_durable.tasks.graph import Graph, Node

if TYPE_CHECKING:
    from celery_durable.durable import Durable


class Saga(Graph):
    """``@saga.step`` adds a step after the last one; ``@step.compensation`` says how to undo it."""

    def __init__(self, durable: Durable, name: str, state: type[BaseModel]) -> None:
        super().__init__(durable, name, state, on_failure="compensate")
        self._last: str | None = None

    # A step is a node; what makes it a step is _added() chaining it after the last one.
    step = Graph.node

    def _added(self, node: Node[..., Any]) -> None:
        if self._last is None:
            self.entry(node)
        else:
            self.edge(self._last, node)
        self._last = node.name
