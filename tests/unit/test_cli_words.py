"""The CLI's errors name its own commands and options, not Python calls: `durable ls`, not
`durable.list()`; a failed run's words say `durable retry` exists; a refused `--update` is
about the values given, not a graph's "Input"."""

from __future__ import annotations

import re

import pytest

from celery_durable import Durable, Status
from celery_durable.cli.words import of_error
from celery_durable.errors import (
    CheckpointCorrupted,
    ChildFailed,
    Compensated,
    DurableError,
    ExecutionFailed,
    ExecutionNotFound,
    GraphVersionMissing,
    InvalidInput,
    NeedsIntervention,
    NotWaiting,
    StateSchemaMismatch,
    WaitTimeout,
)
from tests.unit import cli_app

# A Python call a CLI user cannot make where a command does the same.
PYTHON = re.compile(
    r"Execution\.\w+|durable\.list\(|history\(\)|retry\(\)|skip\(|update_state\(|"
    r"restart_from|waiting_on|progress\(\)|Input for graph"
)
ERROR = {"type": "ConnectionError", "message": "refused", "node": "charge"}


@pytest.mark.parametrize(
    "error",
    [
        ExecutionNotFound("o-1"),
        CheckpointCorrupted("o-1", 3),
        ExecutionFailed("o-1", "charge", ERROR),
        Compensated("o-1", "charge", ERROR),
        NeedsIntervention("o-1", "charge", ERROR),
        NotWaiting("o-1", "an approval", "running"),
        ChildFailed("o-1.c0", "failed", ERROR),
        InvalidInput("order", "total: Input should be a valid integer"),
        InvalidInput("order", "total: Input should be a valid integer", node="charge"),
        InvalidInput("<event>", "an event name is a string of 1 to 200 characters: ''"),
        GraphVersionMissing("o-1", "order", "2", ["3"]),
        StateSchemaMismatch("order", ["total"], "Field required", upgraded=False),
        WaitTimeout("o-1", 5.0, "running"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_every_error_in_cli_words_names_commands(error: DurableError) -> None:
    assert PYTHON.search(str(error)) is not None  # as the errors say it, for Python
    said = of_error(error)
    assert not PYTHON.search(said), said


def test_commands_say_commands_in_their_errors(durable: Durable) -> None:
    approvals = cli_app.define_approvals(durable)
    run = approvals.apply_async(kwargs={"title": "refund"}, execution_id="a-1")
    assert run.status == Status.WAITING

    missing = cli_app.invoke(durable, "show", "nope")
    assert missing.exit_code == 1
    assert "(`durable ls` shows recent ones)" in missing.stderr
    assert "durable.list()" not in missing.stderr

    refused = cli_app.invoke(durable, "resume", "a-1", "--update", '{"approved": "maybe"}')
    assert refused.exit_code == 1
    assert "Input for graph" not in refused.stderr
    assert "The values given do not fit the state model of graph 'approvals'" in refused.stderr
    assert "Nothing was changed; fix them and run the command again." in refused.stderr

    no_seq = cli_app.invoke(durable, "restart", "a-1", "42")
    assert no_seq.exit_code == 1 and "`durable history" in no_seq.stderr, no_seq.stderr
    assert "Execution.history()" not in no_seq.stderr
