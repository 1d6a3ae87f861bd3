"""What a fleet-wide rate limit and a concurrency limit are: validated values, set on nodes and
graphs; the engine's admission (engine/admission.py) applies them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery_durable.errors import InvalidFlowOption


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` calls per ``per`` seconds across the fleet, by name."""

    name: str
    limit: int
    per: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or self.limit < 1 or self.per <= 0:
            raise InvalidFlowOption(
                f"RateLimit({self.name!r}, {self.limit}, per={self.per})",
                "needs a name, a limit of at least 1 call and per greater than 0 seconds",
            )

    @property
    def interval(self) -> timedelta:
        """Calls are spaced evenly, with no burst: a backlog is served at exactly the rate."""
        return timedelta(seconds=self.per / self.limit)


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``max`` at once per ``key(state)`` across the fleet: visits of a node
    (``@g.node(concurrency=...)``) or running executions of a graph
    (``durable.graph(..., concurrency=...)``). The rest wait in the database, first come
    first served, and are sent when a place frees."""

    key: Callable[[Any], object]
    max: int = 1

    def __post_init__(self) -> None:
        if (
            not callable(self.key)
            or isinstance(self.max, bool)
            or not (isinstance(self.max, int) and self.max >= 1)
        ):
            raise InvalidFlowOption(
                f"Limit(key={self.key!r}, max={self.max!r})",
                "needs key=, a function of the state, and max=, an int of at least 1",
            )

    def key_of(self, state: Any) -> str:
        return str(self.key(state))
