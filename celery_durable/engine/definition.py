"""What the engine reads of a graph and its nodes: the definition the builder
(``graphs/builder.py``) makes, never the decorator that made it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

from celery_durable.policies.limits import RateLimit
from celery_durable.policies.retry import RetryPolicy
from celery_durable.saga.shape import GraphShape, NodeShape

OnFailure = Literal["fail", "compensate", "intervene"]
# While a node's breaker is open: wait in the database, or fail the attempt with CircuitOpen.
WhenOpen = Literal["wait", "fail"]


class NodeDefinition(NodeShape, Protocol):
    @property
    def name(self) -> str: ...

    @property
    def fn(self) -> Callable[..., Any]: ...

    @property
    def wants_context(self) -> bool: ...

    @property
    def retry(self) -> RetryPolicy: ...

    @property
    def timeout(self) -> float | None: ...

    @property
    def queue(self) -> str | None: ...

    @property
    def task_name(self) -> str: ...

    @property
    def compensation_task_name(self) -> str: ...

    @property
    def compensator_wants_context(self) -> bool: ...

    @property
    def compensation_retry(self) -> RetryPolicy: ...

    @property
    def breaker(self) -> str | None: ...

    @property
    def when_open(self) -> WhenOpen: ...

    @property
    def rate(self) -> RateLimit | None: ...


class GraphDefinition(GraphShape, Protocol):
    @property
    def nodes(self) -> Mapping[str, NodeDefinition]: ...

    @property
    def on_failure(self) -> OnFailure: ...

    @property
    def reducers(self) -> Mapping[str, Callable[[Any, Any], Any]]: ...
