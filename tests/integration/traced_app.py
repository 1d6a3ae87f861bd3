"""The app the tracing test's workers run (``celery -A tests.integration.traced_app``).

Configured like tests/integration/app.py (CELERY_BROKER_URL, CELERY_DURABLE_DATABASE_URL,
DURABLE_TEST_QUEUE); with DURABLE_TEST_SPANS set, the OpenTelemetry SDK is this process's
tracer provider and every span that ends is appended as a JSON line to
``<DURABLE_TEST_SPANS>.<pid>`` (a pool child writes its own file), so a test reads the spans
of every worker process, killed ones included.

Saga ``traced``: five steps; ``flaky`` fails its first attempt, ``nap`` sleeps durably for
``Voyage.nap`` seconds, ``last`` fails for good, so the four before it are compensated.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from celery import Celery
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from pydantic import BaseModel

from celery_durable import Context, Durable, NonRetryable, RetryPolicy, Saga

DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"
SPANS_ENV = "DURABLE_TEST_SPANS"
STEPS = ("first", "flaky", "nap", "fourth", "last")
QUICK = RetryPolicy(max_attempts=2, initial_delay=0.05, jitter=False)


class Voyage(BaseModel):
    nap: float = 3.0
    attempts: int = 0


class JsonLines(SpanExporter):
    """Each ended span as one JSON line in ``<path>.<pid>``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(f"{self.path}.{os.getpid()}", "a") as out:
            for span in spans:
                out.write(span.to_json(indent=None) + "\n")
        return SpanExportResult.SUCCESS


def traced_by_files() -> None:
    """This process's tracer provider, writing spans where DURABLE_TEST_SPANS says."""
    path = os.environ.get(SPANS_ENV)
    if path:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(JsonLines(path)))
        trace.set_tracer_provider(provider)


@dataclass(frozen=True)
class TracedApp:
    app: Celery
    durable: Durable
    saga: Saga


def build() -> TracedApp:
    queue = os.environ.get("DURABLE_TEST_QUEUE", "durable-tests")
    app = Celery("durable_traced", broker=os.environ.get("CELERY_BROKER_URL", DEFAULT_BROKER))
    app.conf.update(
        task_default_queue=queue,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    durable = Durable(app)
    s = durable.saga("traced", state=Voyage)
    undo = s.step  # every step but the last has an undo that does nothing

    @undo(compensate=lambda state, ctx: None)
    def first(state: Voyage) -> dict[str, object]:
        return {}

    @undo(compensate=lambda state, ctx: None, retry=QUICK)
    def flaky(state: Voyage, ctx: Context) -> dict[str, object]:
        if ctx.attempt == 1:
            raise ConnectionError("the gateway dropped the call")
        return {"attempts": ctx.attempt}

    @undo(compensate=lambda state, ctx: None)
    def nap(state: Voyage, ctx: Context) -> dict[str, object]:
        ctx.sleep(state.nap)
        return {}

    @undo(compensate=lambda state, ctx: None)
    def fourth(state: Voyage) -> dict[str, object]:
        return {}

    @s.step
    def last(state: Voyage) -> dict[str, object]:
        raise NonRetryable("the order was refused")

    return TracedApp(app, durable, s)


if os.environ.get("DURABLE_TEST_QUEUE") and os.environ.get(SPANS_ENV):
    # The worker: spans to files, one app built at import.
    traced_by_files()
    _built = build()
    app = _built.app
