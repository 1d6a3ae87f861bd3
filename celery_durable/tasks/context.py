"""What a node sees besides its state: who it is, which attempt, and durable sub-steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from celery_durable.persistence import codec

T = TypeVar("T")
# The attempt's memoized sub-step: NodeRun.step.
StepRunner = Callable[[str, Callable[..., Any], tuple[Any, ...]], Any]


class Context:
    """Handed to every node and compensation as its second argument."""

    def __init__(
        self,
        steps: StepRunner | None,
        *,
        execution_id: str,
        node: str,
        visit: int,
        attempt: int,
        idempotency_key: str,
    ) -> None:
        self._steps = steps
        self.execution_id = execution_id
        self.node = node
        self.visit = visit
        self.attempt = attempt
        self.idempotency_key = idempotency_key
        """Stable across retries and redeliveries of this node visit: pass it to payment APIs."""

    def step(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` once per node visit and checkpoint its result.

        When the node runs again (a retry, a crash and redelivery), a step that already
        committed returns its stored result instead of running: a node looping over 100 items
        killed at item 61 resumes at item 61. Names must be unique within a node.
        """
        if self._steps is None:
            raise RuntimeError(
                "ctx.step() memoizes sub-steps of a node; a compensation runs as one step, so "
                "call the function directly."
            )
        result: T = self._steps(name, fn, args)
        return result

    def __repr__(self) -> str:
        return (
            f"Context(execution_id={self.execution_id!r}, node={self.node!r}, "
            f"visit={self.visit}, attempt={self.attempt})"
        )


def json_roundtrip(value: T) -> T:
    """What a step returns the first time must equal what it returns on replay."""
    return codec.loads(codec.dumps(value, "A step's result"))  # type: ignore[no-any-return]
