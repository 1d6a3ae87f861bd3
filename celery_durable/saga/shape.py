"""What the decisions need to know of a graph: its shape, not how its nodes run.

The engine's frozen ``GraphDefinition`` and ``NodeDefinition`` (``engine/definition.py``) have
all of this; saga/ is written against these protocols because it sits below the engine and
never imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from pydantic import BaseModel

from celery_durable.policies.limits import Limit

Router = Callable[[Any], "str | Sequence[str] | None"]


class NodeShape(Protocol):
    @property
    def compensator(self) -> Callable[..., Any] | None: ...

    @property
    def interrupt_before(self) -> bool: ...

    @property
    def interrupt_after(self) -> bool: ...

    @property
    def concurrency(self) -> Limit | None: ...

    @property
    def max_visits(self) -> int: ...


class GraphShape(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def state(self) -> type[BaseModel]: ...

    @property
    def entry_node(self) -> str | None: ...

    @property
    def nodes(self) -> Mapping[str, NodeShape]: ...

    @property
    def edges(self) -> Mapping[str, Sequence[str]]: ...

    @property
    def joins(self) -> Mapping[str, frozenset[str]]: ...

    @property
    def branches(self) -> Mapping[str, tuple[Router, tuple[str, ...] | None]]: ...

    @property
    def concurrency(self) -> Limit | None: ...

    @property
    def upgrader(self) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
        """The graph's state upgrade hook, if it has one."""
        ...

    @property
    def version(self) -> str:
        """The version runs started on this definition are pinned to."""
        ...

    def validate(self) -> str:
        """The graph's fingerprint, once the whole definition checks out."""
        ...
