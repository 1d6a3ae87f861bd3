"""OpenTelemetry spans of what a run does, with the ``otel`` extra (opentelemetry-api).

One run is one trace, however many workers and days it spans: its start span's context is
stored in the run's cursor (``Cursor.trace``, a W3C traceparent), which every node message
and every row carries, so each node attempt, inline or not, each compensation, each wait and
each wake is a child of the run's start, on whichever worker it happens. A commit is a child
of the attempt that made it. Spans carry ``durable.execution_id``, ``durable.graph``,
``durable.node``, ``durable.visit``, ``durable.attempt`` and ``durable.version`` (the
graph's), and a failed attempt records its exception.

Without the package, or before the app sets a tracer provider, every function here is a
no-op that allocates nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

try:
    from opentelemetry import trace as _trace
    from opentelemetry.trace import ProxyTracerProvider, SpanKind, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the otel extra is not installed
    _trace = None  # type: ignore[assignment]

ENABLED = _trace is not None
PREFIX = "durable."
TRACEPARENT = "traceparent"

if ENABLED:
    _tracer = _trace.get_tracer("celery_durable")
    _propagator = TraceContextTextMapPropagator()


class Traced:
    """A span while it is open, to name the run it started or say how an attempt ended."""

    def __init__(self, span: Any = None) -> None:
        self._span = span

    def traceparent(self) -> str | None:
        """The span's context as a W3C traceparent: what the run's cursor stores."""
        if self._span is None or not self._span.get_span_context().is_valid:
            return None
        carrier: dict[str, str] = {}
        _propagator.inject(carrier, context=_trace.set_span_in_context(self._span))
        return carrier.get(TRACEPARENT)

    def set(self, **attributes: str | int | None) -> None:
        if self._span is not None:
            self._span.set_attributes(_attributes(attributes))

    def failed(self, error: BaseException) -> None:
        """An attempt's error: recorded on the span, which ends as an error."""
        if self._span is not None:
            self._span.record_exception(error)
            self._span.set_status(StatusCode.ERROR, f"{type(error).__name__}: {error}")


UNTRACED = Traced()
_UNTRACED = nullcontext(UNTRACED)


def recording() -> bool:
    """Whether spans go anywhere: the package is there and the app set a tracer provider
    (until it does, the API's proxy would make spans that record nothing)."""
    return ENABLED and not isinstance(_trace.get_tracer_provider(), ProxyTracerProvider)


def run_start(graph: str) -> AbstractContextManager[Traced]:
    """The span of a run's start, current while the run is stored and its entry sent."""
    return _run_start(graph) if recording() else _UNTRACED


def attempt(
    traceparent: str | None, name: str, attributes: Mapping[str, str | int | None]
) -> AbstractContextManager[Traced]:
    """The span of one attempt, a child of the run's start (``traceparent``), current while
    the attempt runs. Its exceptions (a crash, the database down) are recorded as they pass;
    a failure the engine handled is given by ``Traced.failed``."""
    return _attempt(traceparent, name, attributes) if recording() else _UNTRACED


@contextmanager
def _run_start(graph: str) -> Iterator[Traced]:
    attributes = _attributes({"graph": graph})
    with _tracer.start_as_current_span(
        f"durable.start {graph}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        yield Traced(span)


@contextmanager
def _attempt(
    traceparent: str | None, name: str, attributes: Mapping[str, str | int | None]
) -> Iterator[Traced]:
    with _tracer.start_as_current_span(
        name, context=_parent(traceparent), kind=SpanKind.CONSUMER,
        attributes=_attributes(attributes),
    ) as span:  # fmt: skip
        yield Traced(span)


def finished(name: str, seconds: float, attributes: Mapping[str, str | int | None]) -> None:
    """A span that took ``seconds`` up to now, under the current one (a commit, under its
    attempt): recorded after the fact, so the hot path starts nothing before it knows."""
    if not recording():
        return
    start = time.time_ns() - int(seconds * 1e9)
    span = _tracer.start_span(name, start_time=start, attributes=_attributes(attributes))
    span.end()


def event(traceparent: str | None, name: str, attributes: Mapping[str, str | int | None]) -> None:
    """A span of no length under the run's start: a wait opened, a wake."""
    if not recording():
        return
    span = _tracer.start_span(
        name, context=_parent(traceparent), attributes=_attributes(attributes)
    )
    span.end()


def _parent(traceparent: str | None) -> Any:
    return _propagator.extract({TRACEPARENT: traceparent}) if traceparent else None


def _attributes(values: Mapping[str, str | int | None]) -> dict[str, str | int]:
    return {PREFIX + k: v for k, v in values.items() if v is not None}
