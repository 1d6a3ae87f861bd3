"""What a node sees besides its state: who it is, which attempt, durable sub-steps and
durable waits."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal, Protocol, TypeVar

from celery_durable.errors import EventTimeout
from celery_durable.persistence import codec

T = TypeVar("T")


class Memo(Protocol):
    """What the node visit records across its re-runs (``tasks.memo.VisitMemo``)."""

    def step(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any: ...

    def wait(
        self, kind: Literal["sleep", "event"], *, seconds: float | None, event: str | None
    ) -> dict[str, Any]: ...


class Context:
    """Handed to every node and compensation as its second argument."""

    def __init__(
        self,
        memo: Memo | None,
        *,
        execution_id: str,
        node: str,
        visit: int,
        attempt: int,
        idempotency_key: str,
    ) -> None:
        self._memo = memo
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
        result: T = self._recorder("ctx.step()").step(name, fn, args)
        return result

    def sleep(self, duration: float | timedelta) -> None:
        """Wait ``duration`` without holding a worker: the run is ``waiting`` until then, and
        the node runs again (steps and earlier waits return what they recorded)."""
        seconds = _seconds(duration, "ctx.sleep()")
        self._recorder("ctx.sleep()").wait("sleep", seconds=seconds, event=None)

    def wait_for_event(self, name: str, timeout: float | timedelta | None = None) -> Any:
        """The payload of the next event ``name`` sent to this run (``send_event``), waiting
        for it without holding a worker. Events sent earlier are kept and consumed in the order
        sent, each by one wait. Raises EventTimeout after ``timeout``, if given."""
        seconds = None if timeout is None else _seconds(timeout, "wait_for_event(timeout=)")
        woke = self._recorder("ctx.wait_for_event()").wait("event", seconds=seconds, event=name)
        if woke.get("timeout"):
            raise EventTimeout(self.node, name, seconds or 0.0)
        return woke.get("payload")

    def _recorder(self, what: str) -> Memo:
        if self._memo is None:
            raise RuntimeError(
                f"{what} is for nodes; a compensation runs as one step and cannot wait, so "
                "call the function directly."
            )
        return self._memo

    def __repr__(self) -> str:
        return (
            f"Context(execution_id={self.execution_id!r}, node={self.node!r}, "
            f"visit={self.visit}, attempt={self.attempt})"
        )


def json_roundtrip(value: T) -> T:
    """What a step returns the first time must equal what it returns on replay."""
    return codec.loads(codec.dumps(value, "A step's result"))  # type: ignore[no-any-return]


def _seconds(duration: float | timedelta, what: str) -> float:
    seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
    if not seconds >= 0:
        raise ValueError(f"{what} takes seconds or a timedelta, 0 or more; got {duration!r}")
    return seconds
