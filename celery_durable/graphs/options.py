"""Options checked where they are written, and the node definition they make: a mistake in
``@graph.node(...)`` raises at the decorator, not when the first run reaches the node."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any, TypedDict

from pydantic import BaseModel

from celery_durable.engine.compaction import MIN_KEEP_CHECKPOINTS
from celery_durable.engine.definition import (
    DEFAULT_MAX_VISITS,
    NodeDefinition,
    WhenOpen,
)
from celery_durable.errors import GraphDefinitionError, InvalidNodeOption
from celery_durable.policies.limits import Limit, RateLimit
from celery_durable.policies.retry import RetryPolicy


class NodeOptions(TypedDict, total=False):
    """What ``@graph.node(...)`` and ``@saga.step(...)`` take besides the function."""

    name: str | None
    retry: RetryPolicy | None
    timeout: float | None
    queue: str | None
    compensate: Callable[..., Any] | None
    compensation_retry: RetryPolicy | None
    interrupt_before: bool
    interrupt_after: bool
    breaker: str | None
    when_open: WhenOpen
    rate: RateLimit | None
    concurrency: Limit | None
    max_visits: int


def arity(fn: Callable[..., Any], name: str) -> int:
    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return 2
    if len(params) not in (1, 2):
        raise InvalidNodeOption(
            f"Node {name!r} must take (state) or (state, ctx), not {len(params)} parameters."
        )
    return len(params)


# A version goes into queue names (tasks/forwarding.py) and command lines: kept plain.
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_graph(
    name: str,
    state: object,
    on_failure: object,
    concurrency: object,
    version: object = None,
    keep_checkpoints: object = None,
) -> None:
    """A graph's own options, refused where ``durable.graph(...)`` is called."""
    _check_history(name, keep_checkpoints)
    if version is not None and not (
        isinstance(version, str) and VERSION_PATTERN.fullmatch(version)
    ):
        raise GraphDefinitionError(
            f"Graph {name!r}: version= takes up to 64 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit; got {version!r}."
        )
    if not (isinstance(state, type) and issubclass(state, BaseModel)):
        raise GraphDefinitionError(
            f"Graph {name!r}: state= must be a pydantic BaseModel subclass, got {state!r}."
        )
    if on_failure not in ("fail", "compensate", "intervene"):
        raise GraphDefinitionError(
            f"Graph {name!r}: on_failure must be 'fail', 'compensate' or 'intervene', got "
            f"{on_failure!r}."
        )
    if concurrency is not None and not isinstance(concurrency, Limit):
        raise GraphDefinitionError(f"Graph {name!r}: concurrency= takes a Limit(key=..., max=...).")


def _check_history(name: str, keep: object) -> None:
    """``keep_checkpoints``: None, or at least MIN_KEEP_CHECKPOINTS (engine/compaction.py
    says why)."""
    if keep is not None and (
        isinstance(keep, bool) or not isinstance(keep, int) or keep < MIN_KEEP_CHECKPOINTS
    ):
        raise GraphDefinitionError(
            f"Graph {name!r}: keep_checkpoints= takes the number of newest checkpoints each "
            f"run keeps, an int of at least {MIN_KEEP_CHECKPOINTS}, or None to keep them all; "
            f"got {keep!r}."
        )


def check_undo_loops(name: str, keep: int | None, looping: list[str]) -> None:
    """A graph that bounds its history may not loop through a node that has a compensation:
    every visit of such a node is kept for its undo, so the history would not be bounded."""
    if keep is not None and looping:
        raise GraphDefinitionError(
            f"Graph {name!r}: keep_checkpoints={keep} cannot bound the history of "
            f"{', '.join(map(repr, looping))}: a node with a compensation keeps the checkpoint "
            "of every visit, for its undo, and this one can run again in a loop. Loop through "
            "nodes without a compensation (or in a child run), or drop keep_checkpoints."
        )


def check_options(graph: str, options: Mapping[str, object]) -> None:
    """A node's options, refused where they are written, with a hint for an unknown one."""
    unknown = set(options) - set(NodeOptions.__annotations__)
    if unknown:
        raise InvalidNodeOption(
            f"Graph {graph!r}: unknown node option(s) {', '.join(sorted(unknown))}; "
            "use retry=, timeout=, queue=, compensate=, compensation_retry=, "
            "interrupt_before=, interrupt_after=, breaker=, when_open=, rate=, concurrency=, "
            "max_visits= or name=."
        )
    for option in ("retry", "compensation_retry"):
        value = options.get(option)
        if value is not None and not isinstance(value, RetryPolicy):
            raise InvalidNodeOption(f"Graph {graph!r}: {option}= takes a RetryPolicy.")
    timeout: Any = options.get("timeout")
    if timeout is not None and not timeout > 0:
        raise InvalidNodeOption(f"Graph {graph!r}: timeout= must be a positive number.")
    _check_flow(graph, options)


def _check_flow(graph: str, options: Mapping[str, object]) -> None:
    """Flow control and loop options."""
    max_visits = options.get("max_visits", DEFAULT_MAX_VISITS)
    if isinstance(max_visits, bool) or not isinstance(max_visits, int) or max_visits < 1:
        raise InvalidNodeOption(f"Graph {graph!r}: max_visits= is an int of at least 1.")
    breaker = options.get("breaker")
    if breaker is not None and not (isinstance(breaker, str) and breaker):
        raise InvalidNodeOption(f"Graph {graph!r}: breaker= takes the name of a breaker.")
    if options.get("when_open", "wait") not in ("wait", "fail"):
        raise InvalidNodeOption(f"Graph {graph!r}: when_open= is 'wait' or 'fail'.")
    rate = options.get("rate")
    if rate is not None and not isinstance(rate, RateLimit):
        raise InvalidNodeOption(f"Graph {graph!r}: rate= takes a RateLimit(name, limit, per=).")
    concurrency = options.get("concurrency")
    if concurrency is not None and not isinstance(concurrency, Limit):
        raise InvalidNodeOption(f"Graph {graph!r}: concurrency= takes a Limit(key=..., max=...).")


def node_definition(
    task_prefix: str, name: str, fn: Callable[..., Any], options: NodeOptions
) -> NodeDefinition:
    """The node ``fn`` with checked ``options``, before any compensation is added to it."""
    return NodeDefinition(
        name=name,
        fn=fn,
        task_name=f"{task_prefix}.{name}",
        wants_context=arity(fn, name) == 2,
        retry=options.get("retry") or RetryPolicy(),
        timeout=options.get("timeout"),
        queue=options.get("queue"),
        interrupt_before=bool(options.get("interrupt_before", False)),
        interrupt_after=bool(options.get("interrupt_after", False)),
        breaker=options.get("breaker"),
        when_open=options.get("when_open", "wait"),
        rate=options.get("rate"),
        concurrency=options.get("concurrency"),
        max_visits=options.get("max_visits", DEFAULT_MAX_VISITS),
    )
