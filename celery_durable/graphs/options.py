"""Node options checked where they are written: the function's arity, flow control, loops."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from celery_durable.errors import InvalidNodeOption
from celery_durable.policies.limits import Limit, RateLimit


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


def check_options(
    graph: str,
    breaker: object,
    when_open: object,
    rate: object,
    concurrency: object,
    max_visits: object,
) -> None:
    """Flow control and loop options, refused where they are written."""
    if isinstance(max_visits, bool) or not isinstance(max_visits, int) or max_visits < 1:
        raise InvalidNodeOption(f"Graph {graph!r}: max_visits= is an int of at least 1.")
    if breaker is not None and not (isinstance(breaker, str) and breaker):
        raise InvalidNodeOption(f"Graph {graph!r}: breaker= takes the name of a breaker.")
    if when_open not in ("wait", "fail"):
        raise InvalidNodeOption(f"Graph {graph!r}: when_open= is 'wait' or 'fail'.")
    if rate is not None and not isinstance(rate, RateLimit):
        raise InvalidNodeOption(f"Graph {graph!r}: rate= takes a RateLimit(name, limit, per=).")
    if concurrency is not None and not isinstance(concurrency, Limit):
        raise InvalidNodeOption(f"Graph {graph!r}: concurrency= takes a Limit(key=..., max=...).")
