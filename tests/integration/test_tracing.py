"""A run's trace across real worker processes: a five-step saga with a retry, a durable sleep
across a worker killed and replaced, and a compensation is one trace whose spans are
parented as the run happened, on whichever worker each part ran."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from celery_durable import Compensated, Status
from tests.integration import traced_app
from tests.integration.harness import Workers
from tests.integration.traced_app import SPANS_ENV, JsonLines, TracedApp
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def spans_path(tmp_path: Path) -> Path:
    return tmp_path / "spans"


@pytest.fixture
def traced(client_env: dict[str, str], spans_path: Path) -> Iterator[TracedApp]:
    """The client: its spans go to a file of their own, like the workers'."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(JsonLines(str(spans_path))))
    built = traced_app.build()
    built.durable.migrate()
    try:
        yield built
    finally:
        built.app.close()
        built.durable.db.dispose()


def read_spans(spans_path: Path) -> list[dict[str, Any]]:
    found = []
    for path in spans_path.parent.glob(f"{spans_path.name}.*"):
        for line in path.read_text().splitlines():
            span = json.loads(line)
            span["pid"] = path.suffix[1:]
            found.append(span)
    return found


def undone(spans_path: Path, step: str) -> bool:
    return any(s["name"] == f"durable.compensate traced.{step}" for s in read_spans(spans_path))


def test_a_run_across_a_worker_restart_is_one_trace_parented_as_it_happened(
    env: dict[str, str], queue: str, tmp_path: Path, traced: TracedApp, spans_path: Path
) -> None:
    workers = Workers(
        {**env, SPANS_ENV: str(spans_path)}, queue, tmp_path, app="tests.integration.traced_app"
    )
    try:
        first = workers.start(concurrency=1)
        run = traced.saga.delay(nap=4.0)
        wait_for(lambda: run.refresh().status == Status.WAITING, timeout=30, what="the nap")
        first.kill()  # SIGKILL while the run sleeps: another worker wakes it
        workers.start(concurrency=1)
        with pytest.raises(Compensated):
            run.wait(timeout=60)
        # The last undo's span ends just after its commit finished the run.
        wait_for(lambda: undone(spans_path, "first"), timeout=10, what="the last span")
    finally:
        workers.cleanup()

    spans = [s for s in read_spans(spans_path) if s["name"].startswith("durable.")]
    by_id = {s["context"]["span_id"]: s for s in spans}
    (start,) = [s for s in spans if s["name"] == "durable.start traced"]
    assert start["attributes"]["durable.execution_id"] == run.id
    assert {s["context"]["trace_id"] for s in spans} == {start["context"]["trace_id"]}

    # A copy of a message that found its visit done (a redelivery under load) is an attempt
    # span too, replayed or dropped: the run's own attempts are the others.
    attempts = [
        s
        for s in spans
        if s["name"].startswith(("durable.node", "durable.compensate"))
        and s["attributes"].get("durable.outcome") not in ("replayed", "duplicate", "dropped")
    ]
    seen = sorted((s["name"].split()[0], s["attributes"]["durable.node"]) for s in attempts)
    assert seen == sorted(
        [("durable.node", step) for step in ("first", "flaky", "flaky", "nap", "nap", "fourth")]
        + [("durable.node", "last")]
        + [("durable.compensate", step) for step in ("first", "flaky", "nap", "fourth")]
    )
    for s in attempts:
        assert s["parent_id"] == start["context"]["span_id"], s["name"]
        assert s["attributes"]["durable.execution_id"] == run.id
    failed = [s for s in attempts if s["status"]["status_code"] == "ERROR"]
    assert sorted(s["attributes"]["durable.node"] for s in failed) == ["flaky", "last"]
    assert all(e["name"] == "exception" for s in failed for e in s["events"])

    for s in spans:
        if s["name"] == "durable.commit":
            assert by_id[s["parent_id"]] in attempts
        if s["name"].startswith(("durable.wait", "durable.wake")):
            assert s["parent_id"] == start["context"]["span_id"]
    assert any(s["name"] == "durable.wait sleep" for s in spans)
    assert any(s["name"].startswith("durable.wake") for s in spans)
    # The nap's two attempts ran in two worker processes, before and after the kill.
    naps = [s for s in attempts if s["attributes"]["durable.node"] == "nap"]
    assert len({s["pid"] for s in naps}) == 2
