"""Bad input across the API, the CLI and the operations: each case is refused with an error of
its own whose message says what to do, and nothing is stored or changed."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from celery_durable import Durable, Graph, RateLimit, Status
from celery_durable.errors import (
    CannotSkip,
    CheckpointNotFound,
    ConfigurationError,
    DurableError,
    ExecutionFailed,
    ExecutionIdInUse,
    ExecutionNotFound,
    InvalidExecutionId,
    InvalidFlowOption,
    InvalidInput,
    InvalidNodeOption,
    InvalidPriority,
    InvalidTransition,
    NotJSONSerializable,
    NotWaiting,
    StateTooLarge,
    UnknownNode,
)
from celery_durable.testing import embedded_app, in_process_worker
from tests.unit import cli_app
from tests.unit.test_cli import celery

SQL = "x'; DROP TABLE durable_executions; --"
SHELL = "$(touch /tmp/pwned); `id` | rm -rf ~"


class Ticket(BaseModel):
    title: str
    priority: int = 0
    tags: dict[str, Any] = {}


@pytest.fixture
def tickets(durable_embedded: Durable) -> Graph:
    g = durable_embedded.graph("tickets", state=Ticket)

    @g.node
    def triage(state: Ticket) -> dict[str, int]:
        return {"priority": 1}

    g.entry(triage)
    return g


def nothing_stored(durable: Durable) -> None:
    assert durable.list() == []


START_CASES: dict[str, tuple[Callable[[Graph], Any], type[DurableError], str]] = {
    "wrong type": (lambda g: g.delay(title="t", priority="high"), InvalidInput, "priority"),
    "missing field": (lambda g: g.delay(priority=1), InvalidInput, "title"),
    "unknown field": (lambda g: g.delay(title="t", prio=1), InvalidInput, "prio"),
    "input not a mapping": (lambda g: g.apply_async([1, 2]), InvalidInput, "mapping"),  # type: ignore[arg-type]
    "not JSON": (
        lambda g: g.delay(title="t", tags={"at": object()}),
        NotJSONSerializable,
        "cannot be stored as JSON",
    ),
    "oversized": (lambda g: g.delay(title="x" * 2_000_000), StateTooLarge, "max_state_bytes"),
    "id of 10,000 characters": (
        lambda g: g.apply_async({"title": "t"}, execution_id="i" * 10_000),
        InvalidExecutionId,
        "255",
    ),
    "empty id": (
        lambda g: g.apply_async({"title": "t"}, execution_id=""),
        InvalidExecutionId,
        "non-empty string",
    ),
    "priority out of range": (
        lambda g: g.apply_async({"title": "t"}, priority=10),
        InvalidPriority,
        "not a message priority",
    ),
}


@pytest.mark.parametrize("case", sorted(START_CASES))
def test_a_bad_start_is_refused_and_stores_nothing(
    case: str, tickets: Graph, durable_embedded: Durable
) -> None:
    start, error, words = START_CASES[case]
    with pytest.raises(error, match=words):
        start(tickets)
    nothing_stored(durable_embedded)


def test_sql_and_shell_metacharacters_are_plain_text(
    tickets: Graph, durable_embedded: Durable
) -> None:
    with in_process_worker(durable_embedded):
        for weird in (SQL, SHELL):
            run = tickets.apply_async({"title": weird}, execution_id=weird)
            assert run.wait(timeout=10).title == weird
    assert sorted(r.id for r in durable_embedded.list()) == sorted([SQL, SHELL])
    with pytest.raises(ExecutionNotFound):
        durable_embedded.get(SQL + "'")


def test_unknown_ids_and_names(tickets: Graph, durable_embedded: Durable) -> None:
    with pytest.raises(ExecutionNotFound, match="i" * 50):
        durable_embedded.get("i" * 10_000)
    with pytest.raises(ExecutionNotFound):
        durable_embedded.send_event("nope", "paid", {})
    other = durable_embedded.graph("other", state=Ticket)
    other.node(lambda s: None, name="x")
    other.entry("x")
    tickets.apply_async({"title": "t"}, execution_id="t-1")
    with pytest.raises(ExecutionIdInUse):
        other.apply_async({"title": "t"}, execution_id="t-1")
    assert [r.record.graph for r in durable_embedded.list()] == ["tickets"]


OPERATION_CASES: dict[str, tuple[Callable[[Any], Any], type[DurableError]]] = {
    "resume a succeeded run": (lambda run: run.resume(), InvalidTransition),
    "retry a succeeded run": (lambda run: run.retry(), InvalidTransition),
    "pause a succeeded run": (lambda run: run.pause(), InvalidTransition),
    "compensate a plain graph": (lambda run: run.compensate("why"), DurableError),
    "restart from a checkpoint that does not exist": (
        lambda run: run.restart_from(99),
        CheckpointNotFound,
    ),
    "skip a node the graph lacks": (lambda run: run.skip("nowhere"), (UnknownNode, CannotSkip)),  # type: ignore[dict-item]
    "send an event to a finished run": (lambda run: run.send_event("note", 1), InvalidTransition),
    "cancel a finished run": (lambda run: run.cancel(), InvalidTransition),
}


@pytest.mark.parametrize("case", sorted(OPERATION_CASES))
def test_an_operation_that_does_not_fit_changes_nothing(
    case: str, tickets: Graph, durable_embedded: Durable
) -> None:
    with in_process_worker(durable_embedded):
        run = tickets.apply_async({"title": "t"}, execution_id="done-1")
        run.wait(timeout=10)
    before = (run.refresh().version, len(run.history()))
    operation, error = OPERATION_CASES[case]
    with pytest.raises(error):
        operation(run)
    assert (run.refresh().version, len(run.history())) == before
    assert run.status == Status.SUCCEEDED


RUNNING_CASES: dict[str, tuple[Callable[[Any], Any], type[DurableError]]] = {
    "patch with a wrong type": (lambda run: run.update_state({"priority": "high"}), InvalidInput),
    "patch a field the model lacks": (lambda run: run.update_state({"prio": 1}), InvalidInput),
    "patch that is not a mapping": (lambda run: run.update_state([1]), InvalidInput),
    "an event payload that is not JSON": (
        lambda run: run.send_event("note", {"at": object()}),
        NotJSONSerializable,
    ),
    "resume a run that waits for no approval": (lambda run: run.resume(), NotWaiting),
}


@pytest.mark.parametrize("case", sorted(RUNNING_CASES))
def test_bad_changes_to_a_running_run_change_nothing(
    case: str, tickets: Graph, durable_embedded: Durable
) -> None:
    run = tickets.apply_async({"title": "t"}, execution_id="live-1")  # no worker: it waits
    before = (run.refresh().version, run.refresh().state, len(run.history()))
    operation, error = RUNNING_CASES[case]
    with pytest.raises(error):
        operation(run)
    assert (run.refresh().version, run.refresh().state, len(run.history())) == before


def test_bad_definitions_and_settings(tickets: Graph) -> None:
    with pytest.raises(InvalidNodeOption, match="unknown node option"):
        tickets.node(lambda s: None, name="y", retries=3)
    with pytest.raises(InvalidFlowOption):
        RateLimit("", 10)
    with pytest.raises(ConfigurationError, match="max_state_bytes"):
        Durable(embedded_app("bad"), "sqlite:///:memory:", max_state_bytes=-1)
    with pytest.raises(ConfigurationError):
        Durable(embedded_app("bad2"), "mysql://nope")


CLI_CASES = {
    "show an unknown id": (["show", "nope"], 1, "No execution with id"),
    "show an id of 10,000 characters": (["show", "i" * 10_000], 1, "(10000 chars)"),
    "show SQL in an id": (["show", SQL], 1, "No execution with id"),
    "patch with text that is not JSON": (["patch", "t-1", "not json"], 2, "not JSON"),
    "patch with a list": (["patch", "t-1", "[1]"], 2, "JSON object"),
    "prune with an age that has no unit": (["prune", "--older-than", "7x"], 2, "90s"),
    "resume a run that does not wait": (["resume", "t-1"], 1, "t-1"),
    "restart from a checkpoint that is not a number": (["restart", "t-1", "two"], 2, "two"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_the_cli_refuses_bad_input_with_a_message(
    case: str, durable: Durable, sqlite_url: str
) -> None:
    tickets = cli_app.define(durable)
    tickets.apply_async({"title": "t"}, execution_id="t-1")
    args, code, words = CLI_CASES[case]
    done = celery(sqlite_url, *args)
    assert done.returncode == code, done.stderr
    assert words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    listed = json.loads(celery(sqlite_url, "ls", "--json").stdout)
    assert [(r["id"], r["version"]) for r in listed] == [("t-1", 0)]


def test_a_node_update_the_model_refuses_fails_the_run_in_words_that_fit(
    durable_embedded: Durable,
) -> None:
    """A node's own bad output is not bad input: the message names the node, says its visit
    was not committed, and points at retry(), which exists for a failed run."""
    g = durable_embedded.graph("sloppy", state=Ticket)

    @g.node
    def rate(state: Ticket) -> dict[str, str]:
        return {"priority": "urgent"}

    g.entry(rate)
    with in_process_worker(durable_embedded):
        run = g.delay(title="printer")
        with pytest.raises(ExecutionFailed) as failed:
            run.wait(timeout=10)
    assert run.status == Status.FAILED
    assert run.error is not None and run.error["type"] == "InvalidInput"
    message = run.error["message"]
    assert "node 'rate'" in message and "priority" in message and "retry()" in message
    assert "Nothing was stored or sent" not in message
    assert "Execution.retry()" in str(failed.value) and "start a new run" not in str(failed.value)
