"""What a node sees besides its state: who it is, which attempt, durable sub-steps and
durable waits."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel

from celery_durable.errors import ChildFailed, EventTimeout, NotJSONSerializable
from celery_durable.model.records import ExecutionRecord
from celery_durable.persistence import codec

T = TypeVar("T")


class Memo(Protocol):
    """What the node visit records across its re-runs (``tasks.memo.VisitMemo``)."""

    def step(
        self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], breaker: str | None = None
    ) -> Any: ...

    def wait(
        self,
        kind: Literal["sleep", "event", "child"],
        *,
        seconds: float | None = None,
        event: str | None = None,
        child: str | None = None,
    ) -> dict[str, Any]: ...

    def start_child(
        self, graph: Any, input: dict[str, Any], key: str | None, tags: Mapping[str, str] | None
    ) -> str: ...

    def map(
        self, graph: Any, inputs: list[dict[str, Any]], tags: Mapping[str, str] | None
    ) -> list[ExecutionRecord]: ...


class Publisher(Protocol):
    """Where ``ctx.emit()`` sends a value (``engine.stream.Emitter``)."""

    def emit(self, data: Any) -> None: ...


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
        publisher: Publisher | None = None,
    ) -> None:
        self._memo = memo
        self._publisher = publisher
        self.execution_id = execution_id
        self.node = node
        self.visit = visit
        self.attempt = attempt
        self.idempotency_key = idempotency_key
        """Stable across retries and redeliveries of this node visit: pass it to payment APIs."""

    def step(self, name: str, fn: Callable[..., T], *args: Any, breaker: str | None = None) -> T:
        """Run ``fn(*args)`` once per node visit and checkpoint its result.

        When the node runs again (a retry, a crash and redelivery), a step that already
        committed returns its stored result instead of running: a node looping over 100 items
        killed at item 61 resumes at item 61. Names must be unique within a node. Behind a
        ``breaker`` (``durable.breaker``), an open one holds the whole visit back.
        """
        result: T = self._recorder("ctx.step()").step(name, fn, args, breaker)
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

    def start_child(
        self,
        graph: Any,
        input: dict[str, Any] | BaseModel | None = None,
        key: str | None = None,
        *,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Start a run of ``graph`` (a graph or saga) as a child of this run; returns its id.
        The id is derived from this run's id, node, visit and ``key`` (default: the order of
        the calls), so a node that runs again never starts a child twice. The child carries
        this run's tags, unless given ``tags`` of its own (``{}``: none)."""
        values = input.model_dump(mode="json") if isinstance(input, BaseModel) else input or {}
        return str(self._recorder("ctx.start_child()").start_child(graph, values, key, tags))

    def wait_child(self, child_id: str) -> dict[str, Any]:
        """The final state of a child run, waiting for it without holding a worker. Raises
        ChildFailed if it ended failed, compensated or cancelled."""
        woke = self._recorder("ctx.wait_child()").wait("child", child=child_id)
        if woke["status"] != "succeeded":
            raise ChildFailed(child_id, woke["status"], woke.get("error"))
        return dict(woke["state"])

    def map(
        self,
        graph: Any,
        inputs: Iterable[dict[str, Any] | BaseModel],
        *,
        tags: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Run ``graph`` once per input, as child runs in parallel, and return their final
        states in input order (up to 10,000). Raises ChildFailed naming the first child, in
        input order, that did not succeed. The children carry this run's tags, unless given
        ``tags`` of their own."""
        values = [i.model_dump(mode="json") if isinstance(i, BaseModel) else i for i in inputs]
        children = self._recorder("ctx.map()").map(graph, values, tags)
        for child in children:
            if child.status != "succeeded":
                raise ChildFailed(child.id, child.status, child.error)
        return [dict(child.state) for child in children]

    def emit(self, data: Any) -> None:
        """Publish ``data`` (JSON, or a model) to whoever streams this run (``run.stream()``),
        between its checkpoints: progress, partial results, tokens.

        Not a checkpoint: the state, history and time travel never see it. It is kept with
        the run (so a stream that starts or resumes later still gets it) and pruned with it.
        Code outside ``ctx.step`` runs again when the node does, and emits again: each value
        carries its ``attempt``, so a reader can tell a failed attempt's values apart.
        """
        if self._publisher is None:
            raise RuntimeError(
                "ctx.emit() publishes to a run's streams, so it needs a node or compensation "
                "run by a worker; this context belongs to none."
            )
        self._publisher.emit(data)

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


def as_update(result: Any) -> dict[str, Any]:
    """A node's return value as a state update: None, a dict, or a model (its set fields)."""
    if result is None:
        return {}
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json", exclude_unset=True)
    if isinstance(result, dict):
        return json_roundtrip(result)
    raise NotJSONSerializable(
        "A node's return value",
        f"expected a dict of state fields or None, got {type(result).__name__}",
    )
