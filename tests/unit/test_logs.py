"""Run-scoped logs: the bound coordinates reach every record, stay in their own thread or
task, and come out of JSONFormatter as fields."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from celery_durable import Durable, ExecutionFailed, RetryPolicy
from celery_durable.logs import FIELDS, JSONFormatter, RunContext, bound, configure, current


class Empty(BaseModel):
    pass


RUN: dict[str, Any] = {
    "execution_id": "ex-1",
    "graph": "order",
    "node": "charge",
    "visit": 2,
    "attempt": 3,
}


class Capture(logging.Handler):
    """Keeps the records it is handed, after its filters ran."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(RunContext())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, Capture]]:
    """A parent logger with the handler, and a child logger whose records propagate to it:
    the filter must see propagated records, which is why it sits on the handler."""
    parent = logging.getLogger("test_logs")
    handler = Capture()
    parent.addHandler(handler)
    parent.setLevel(logging.DEBUG)
    try:
        yield logging.getLogger("test_logs.engine"), handler
    finally:
        parent.removeHandler(handler)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS}


def test_a_record_made_inside_a_binding_carries_the_run(
    capture: tuple[logging.Logger, Capture],
) -> None:
    log, handler = capture
    with bound(**RUN):
        log.info("charging")
    log.info("between runs")
    inside, outside = handler.records
    assert fields(inside) == RUN
    assert fields(outside) == dict.fromkeys(FIELDS)


def test_extra_wins_over_the_binding(capture: tuple[logging.Logger, Capture]) -> None:
    log, handler = capture
    with bound(**RUN):
        log.info("the compensation's node", extra={"node": "refund"})
    (record,) = handler.records
    assert fields(record) == {**RUN, "node": "refund"}


def test_a_nested_binding_replaces_the_outer_one_then_restores_it(
    capture: tuple[logging.Logger, Capture],
) -> None:
    log, handler = capture
    with bound(**RUN):
        with bound(execution_id="child", graph="shipping"):
            log.info("child run")
            assert current() == {"execution_id": "child", "graph": "shipping"}
        log.info("parent again")
    assert current() == {}
    child, parent = handler.records
    assert fields(child) == {**dict.fromkeys(FIELDS), "execution_id": "child", "graph": "shipping"}
    assert fields(parent) == RUN


def test_a_binding_is_unwound_by_an_exception() -> None:
    with pytest.raises(RuntimeError), bound(**RUN):
        raise RuntimeError("node failed")
    assert current() == {}


def test_threads_see_only_their_own_binding(capture: tuple[logging.Logger, Capture]) -> None:
    log, handler = capture
    both_bound = threading.Barrier(2, timeout=5)

    def attempt(n: int) -> None:
        with bound(execution_id=f"ex-{n}", node="charge", visit=n):
            both_bound.wait()
            log.info("attempt %d", n)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    seen = {r.getMessage(): (r.execution_id, r.visit) for r in handler.records}  # type: ignore[attr-defined]
    assert seen == {"attempt 1": ("ex-1", 1), "attempt 2": ("ex-2", 2)}
    assert current() == {}


def test_asyncio_tasks_see_only_their_own_binding(
    capture: tuple[logging.Logger, Capture],
) -> None:
    log, handler = capture

    async def attempt(n: int, other_bound: asyncio.Event, mine: asyncio.Event) -> None:
        with bound(execution_id=f"ex-{n}", attempt=n):
            mine.set()
            await other_bound.wait()
            log.info("attempt %d", n)

    async def main() -> None:
        one, two = asyncio.Event(), asyncio.Event()
        await asyncio.gather(attempt(1, two, one), attempt(2, one, two))

    asyncio.run(main())
    seen = {r.getMessage(): (r.execution_id, r.attempt) for r in handler.records}  # type: ignore[attr-defined]
    assert seen == {"attempt 1": ("ex-1", 1), "attempt 2": ("ex-2", 2)}


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RunContext())
    handler.setFormatter(JSONFormatter())
    log = logging.getLogger("test_logs.json")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        yield log, stream
    finally:
        log.removeHandler(handler)
        log.propagate = True


def test_a_json_line_for_a_failed_node_carries_the_run_and_the_exception(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = json_log
    with bound(**RUN):
        try:
            raise ValueError("card declined")
        except ValueError:
            log.exception("node %s failed", "charge")
    (line,) = json_lines(stream)
    assert {k: line[k] for k in FIELDS} == RUN
    assert (line["level"], line["logger"], line["message"]) == (
        "ERROR",
        "test_logs.json",
        "node charge failed",
    )
    assert line["time"].endswith("+00:00") and "T" in line["time"]
    assert "ValueError: card declined" in line["exception"]
    assert "Traceback" in line["exception"]


def test_a_json_line_outside_a_run_has_no_run_fields_but_keeps_extra(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = json_log
    unencodable = object()
    log.warning("sweep", extra={"published": 3, "reasons": ["due"], "thing": unencodable})
    (line,) = json_lines(stream)
    assert not FIELDS & line.keys()
    assert (line["published"], line["reasons"]) == (3, ["due"])
    assert line["thing"] == repr(unencodable)
    assert "exception" not in line and "args" not in line and "msg" not in line


@pytest.fixture
def root_handlers() -> Iterator[list[logging.Handler]]:
    """The root logger's handlers, restored (formatters and filters too) afterwards."""
    root = logging.getLogger()
    saved = [(h, h.formatter, list(h.filters)) for h in root.handlers]
    handlers = list(root.handlers)
    try:
        yield handlers
    finally:
        root.handlers = handlers
        for handler, formatter, filters in saved:
            handler.setFormatter(formatter)
            handler.filters = filters


def test_configure_switches_every_root_handler_to_json_once(
    root_handlers: list[logging.Handler],
) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(stream)
    root.handlers = [handler]
    task_logger = logging.getLogger("test_logs.task")
    task_handler = logging.StreamHandler(io.StringIO())
    task_logger.addHandler(task_handler)
    try:
        configure(json=True, loggers=[task_logger])
        configure(json=True, loggers=[task_logger])
        for h in (handler, task_handler):
            assert isinstance(h.formatter, JSONFormatter)
            assert sum(isinstance(f, RunContext) for f in h.filters) == 1
        with bound(**RUN):
            logging.getLogger("test_logs.anywhere").error("through the root")
    finally:
        task_logger.removeHandler(task_handler)
    (line,) = json_lines(stream)
    assert {k: line[k] for k in FIELDS} == RUN


def test_configure_text_keeps_the_format_and_adds_the_fields(
    root_handlers: list[logging.Handler],
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(execution_id)s %(node)s %(message)s"))
    logging.getLogger().handlers = [handler]
    configure(json=False)
    with bound(**RUN):
        logging.getLogger("test_logs.text").error("declined")
    logging.getLogger("test_logs.text").error("idle")
    assert stream.getvalue().splitlines() == ["ex-1 charge declined", "None None idle"]


def test_configure_json_gives_a_bare_command_line_a_stderr_handler(
    root_handlers: list[logging.Handler], capsys: pytest.CaptureFixture[str]
) -> None:
    logging.getLogger().handlers = []
    configure(json=True)
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler.formatter, JSONFormatter)
    assert any(isinstance(f, RunContext) for f in handler.filters)
    logging.getLogger("test_logs.cli").warning("database down")
    (line,) = (json.loads(x) for x in capsys.readouterr().err.splitlines())
    assert (line["level"], line["message"]) == ("WARNING", "database down")


def test_the_worker_logs_a_failed_node_as_a_json_line_with_its_run(
    durable: Durable, worker
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RunContext())
    handler.setFormatter(JSONFormatter())
    engine = logging.getLogger("celery_durable")
    engine.addHandler(handler)
    g = durable.graph("logged", state=Empty)

    @g.node(retry=RetryPolicy(max_attempts=1))
    def charge(state: Empty) -> None:
        raise ConnectionError("the gateway is down")

    g.entry(charge)
    try:
        with worker():
            run = g.delay()
            with pytest.raises(ExecutionFailed):
                run.wait(timeout=10)
    finally:
        engine.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    failed = [line for line in lines if line["level"] == "ERROR" and "gateway" in line["message"]]
    assert failed, lines
    assert {k: failed[0].get(k) for k in FIELDS} == {
        "execution_id": run.id,
        "graph": "logged",
        "node": "charge",
        "visit": 1,
        "attempt": 1,
    }
