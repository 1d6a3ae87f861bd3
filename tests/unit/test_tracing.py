"""OpenTelemetry spans of a run, taken with the SDK's in-memory exporter: one trace per run,
every attempt (retries and inline nodes included), wait, wake and compensation a child of the
run's start, each commit a child of its attempt, a failed attempt recorded as an error."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from pydantic import BaseModel

from celery_durable import Compensated, Context, Durable, RetryPolicy, tracing
from celery_durable.testing import fast_forward
from tests.waiting import wait_for

EXPORTER = InMemorySpanExporter()


@pytest.fixture(autouse=True, scope="module")
def provider() -> None:
    """The process's one tracer provider (OpenTelemetry allows setting it once)."""
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        current = TracerProvider()
        trace.set_tracer_provider(current)
    current.add_span_processor(SimpleSpanProcessor(EXPORTER))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


class Order(BaseModel):
    tries: int = 0
    charged: bool = False


def attr(span: ReadableSpan, name: str) -> Any:
    assert span.attributes is not None
    return span.attributes.get(f"durable.{name}")


def test_a_run_is_one_trace_whose_spans_are_parented_as_it_happened(
    durable: Durable, worker, spans: InMemorySpanExporter
) -> None:
    assert tracing.ENABLED
    failures = iter([RuntimeError("gateway timeout")])
    s = durable.saga("order", state=Order)

    @s.step(compensate=lambda state, ctx: None)
    def reserve(state: Order, ctx: Context) -> dict[str, object]:
        return {}

    @s.step(retry=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=False))
    def charge(state: Order, ctx: Context) -> dict[str, object]:
        if (error := next(failures, None)) is not None:
            raise error
        ctx.sleep(60)
        return {"charged": True}

    charge.compensation(lambda state, ctx: None)

    @s.step(retry=RetryPolicy(max_attempts=1))
    def ship(state: Order) -> dict[str, object]:
        raise ValueError("no courier")

    tracer = trace.get_tracer("app")
    with worker(), tracer.start_as_current_span("checkout request") as request:
        run = s.delay()
        wait_for(lambda: run.refresh().status == "waiting", timeout=10, what="the sleep")
        fast_forward(durable, 60)
        with pytest.raises(Compensated):
            run.wait(timeout=10)
    finished = [sp for sp in spans.get_finished_spans() if sp.name != "checkout request"]
    (start,) = [sp for sp in finished if sp.name == "durable.start order"]
    assert start.parent is not None and start.parent.span_id == request.get_span_context().span_id
    assert {sp.context.trace_id for sp in finished} == {start.context.trace_id}
    assert attr(start, "execution_id") == run.id

    attempts = [sp for sp in finished if sp.name.startswith(("durable.node", "durable.compensate"))]
    by_name = [(sp.name, attr(sp, "attempt"), attr(sp, "visit")) for sp in attempts]
    assert sorted(by_name) == sorted(
        [
            ("durable.node order.reserve", 1, 1),
            ("durable.node order.charge", 1, 1),  # failed
            ("durable.node order.charge", 2, 1),  # waits
            ("durable.node order.charge", 1, 1),  # the message again, after the wake
            ("durable.node order.ship", 1, 1),
            ("durable.compensate order.charge", 1, 1),
            ("durable.compensate order.reserve", 1, 1),
        ]
    )
    for sp in attempts:
        assert sp.parent is not None and sp.parent.span_id == start.context.span_id, sp.name
        assert attr(sp, "execution_id") == run.id and attr(sp, "graph") == "order"
    failed = [sp for sp in attempts if sp.status.status_code == StatusCode.ERROR]
    assert sorted(attr(sp, "node") for sp in failed) == ["charge", "ship"]
    for sp in failed:
        assert [e.name for e in sp.events] == ["exception"]
    shipping = next(sp for sp in failed if attr(sp, "node") == "ship")
    assert shipping.events[0].attributes["exception.message"] == "no courier"  # type: ignore[index]

    ids = {sp.context.span_id for sp in attempts}
    commits = [sp for sp in finished if sp.name == "durable.commit"]
    assert commits and all(sp.parent is not None and sp.parent.span_id in ids for sp in commits)
    kinds = {attr(sp, "kind") for sp in commits}
    assert {"node", "failure", "compensation"} <= kinds
    wait = next(sp for sp in finished if sp.name == "durable.wait sleep")
    wake = next(sp for sp in finished if sp.name.startswith("durable.wake"))
    for sp in (wait, wake):
        assert sp.parent is not None and sp.parent.span_id == start.context.span_id


def test_before_the_app_sets_a_provider_nothing_is_traced_or_stored() -> None:
    # A fresh process: the API is installed, no tracer provider set yet.
    code = (
        "from celery_durable import tracing\n"
        "assert tracing.ENABLED and not tracing.recording()\n"
        "with tracing.run_start('g') as span:\n"
        "    assert span is tracing.UNTRACED and span.traceparent() is None\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_with_a_provider_the_cursor_carries_the_start_span(durable: Durable, worker) -> None:
    g = durable.graph("plain", state=Order)

    @g.node
    def only(state: Order) -> dict[str, object]:
        return {"charged": True}

    g.entry(only)
    with worker():
        run = g.delay()
        run.wait(timeout=10)
    assert (run.refresh().cursor.trace or "").startswith("00-")
