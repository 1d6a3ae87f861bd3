"""The CLI as users run it: `celery -A module durable ...` in a subprocess, output and effect."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from celery_durable import Durable, Graph, Status
from tests.unit import cli_app
from tests.waiting import wait_for, waiting_kind

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tickets(durable: Durable) -> Graph:
    """The CLI app's graph, defined on this test's Durable and database."""
    return cli_app.define(durable)


def celery(
    database_url: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CELERY_DURABLE_DATABASE_URL": database_url,
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.unit.cli_app", "durable", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


def test_ls_show_history_and_operations(tickets: Graph, sqlite_url: str) -> None:
    run = tickets.apply_async(kwargs={"title": "printer on fire"}, execution_id="t-1")

    listed = celery(sqlite_url, "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(r["id"], r["status"]) for r in json.loads(listed.stdout)] == [("t-1", "running")]
    table = celery(sqlite_url, "ls", "--status", "running")
    assert "t-1" in table.stdout and "tickets" in table.stdout and "triage" in table.stdout

    shown = celery(sqlite_url, "show", run.id)
    assert "▶ triage" in shown.stdout and "· close" in shown.stdout, shown.stdout

    paused = celery(sqlite_url, "pause", run.id, "--reason", "investigating", "--by", "ops")
    assert paused.returncode == 0, paused.stderr
    assert run.status == Status.PAUSED
    last = run.history()[-1]
    assert (last.kind, last.meta["op"], last.meta["by"], last.meta["reason"]) == (
        "manual",
        "pause",
        "ops",
        "investigating",
    )

    refused = celery(sqlite_url, "pause", run.id)
    assert refused.returncode == 1
    assert "Cannot pause execution 't-1': it is paused" in refused.stderr
    assert "Traceback" not in refused.stderr

    patched = celery(sqlite_url, "patch", run.id, '{"title": "printer fixed"}')
    assert patched.returncode == 0, patched.stderr
    assert run.state.title == "printer fixed"
    bad = celery(sqlite_url, "patch", run.id, '{"priority": 1}')
    assert bad.returncode == 1 and "no field(s) priority" in bad.stderr

    history = celery(sqlite_url, "history", run.id, "--json")
    kinds = [(c["kind"], (c["meta"] or {}).get("op")) for c in json.loads(history.stdout)]
    assert kinds == [("start", None), ("manual", "pause"), ("manual", "patch")]

    cancelled = celery(sqlite_url, "cancel", run.id, "--reason", "duplicate ticket")
    assert cancelled.returncode == 0, cancelled.stderr
    assert run.status == Status.CANCELLED


def test_cancel_with_the_broker_down_is_committed_and_said_in_one_line(
    tickets: Graph, sqlite_url: str
) -> None:
    run = tickets.apply_async(kwargs={"title": "printer on fire"}, execution_id="t-1")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    down = {"CLI_APP_BROKER_URL": f"amqp://guest:secret@127.0.0.1:{port}//"}  # nothing listens

    cancelled = celery(sqlite_url, "cancel", run.id, "--reason", "duplicate", env=down)
    assert cancelled.returncode == 0, cancelled.stderr
    assert run.status == Status.CANCELLED
    assert cancelled.stderr == ""  # no traceback, no log line
    (line,) = cancelled.stdout.splitlines()
    assert line.startswith("t-1: cancelled, but the broker could not be told to revoke its tasks")
    assert f"Check that the broker at amqp://guest:**@127.0.0.1:{port}// is up" in line


def test_progress_prune_recover_and_migrate(tickets: Graph, sqlite_url: str) -> None:
    run = tickets.delay(title="x")
    progress = celery(sqlite_url, "progress", run.id, "--json")
    assert json.loads(progress.stdout)["done"] == 0 and json.loads(progress.stdout)["total"] == 2

    dry = celery(sqlite_url, "prune", "--older-than", "0s", "--dry-run", "--json")
    assert json.loads(dry.stdout)["succeeded"] == 0  # a running run is never pruned

    assert celery(sqlite_url, "recover").returncode == 0
    migrated = celery(sqlite_url, "migrate")
    assert "already at revision" in migrated.stdout


def test_unknown_execution_is_a_clear_error(tickets: Graph, sqlite_url: str) -> None:
    result = celery(sqlite_url, "show", "nope")
    assert result.returncode == 1
    assert "No execution with id 'nope'" in result.stderr


def test_script_runs_read_only_commands_without_an_app(tickets: Graph, sqlite_url: str) -> None:
    tickets.apply_async(kwargs={"title": "y"}, execution_id="t-9")
    result = subprocess.run(
        [sys.executable, "-m", "celery_durable.cli", "--database-url", sqlite_url, "ls"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "t-9" in result.stdout


def test_waiting_runs_are_listed_approved_and_sent_events(
    durable: Durable, worker, sqlite_url: str
) -> None:
    approvals = cli_app.define_approvals(durable)
    run = approvals.apply_async(kwargs={"title": "refund"}, execution_id="a-1")
    assert run.status == Status.WAITING  # review asks for approval before it runs

    listed = celery(sqlite_url, "ls", "--status", "waiting")
    assert "a-1" in listed.stdout and "approval before review" in listed.stdout, listed.stdout
    refused = celery(sqlite_url, "resume", run.id, "--update", '{"approved": "maybe"}')
    assert refused.returncode == 1 and "approved" in refused.stderr
    assert run.status == Status.WAITING

    approved = celery(sqlite_url, "resume", run.id, "--update", '{"approved": true}', "--by", "ops")
    assert approved.returncode == 0, approved.stderr
    assert run.state.approved is True and run.history()[-1].meta["by"] == "ops"

    second = approvals.apply_async(kwargs={"title": "refund"}, execution_id="a-2")
    with worker():
        second.resume(update={"approved": True})
        wait_for(lambda: waiting_kind(second) == "event", 5.0)
    sent = celery(
        sqlite_url, "send-event", second.id, "note", "--data", '"fine"', "--key", "k", "--by", "ops"
    )
    assert sent.returncode == 0, sent.stderr
    woke = [cp for cp in second.history() if cp.kind == "wake" and cp.node == "annotate@0"]
    assert woke[0].output["payload"] == "fine" and woke[0].output["by"] == "ops"
    again = celery(sqlite_url, "send-event", second.id, "note", "--data", "not json")
    assert again.returncode == 2 and "not JSON" in again.stderr


def test_breakers_are_listed_and_opened_and_closed_by_hand(
    sqlite_url: str, durable: Durable
) -> None:
    listed = celery(sqlite_url, "breakers", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(b["name"], b["state"]) for b in json.loads(listed.stdout)] == [("payments", "closed")]
    opened = celery(sqlite_url, "breaker", "open", "payments", "--by", "ops", "--reason", "outage")
    assert opened.returncode == 0, opened.stderr
    table = celery(sqlite_url, "breakers").stdout
    assert "payments" in table and "open" in table and "by ops: outage" in table, table
    assert celery(sqlite_url, "breaker", "close", "payments").returncode == 0
    assert json.loads(celery(sqlite_url, "breakers", "--json").stdout)[0]["state"] == "closed"
    unknown = celery(sqlite_url, "breaker", "open", "nope")
    assert unknown.returncode == 1 and "No circuit breaker named 'nope'" in unknown.stderr


def test_verify_reports_a_tampered_checkpoint_and_exits_1(
    tickets: Graph, sqlite_url: str, durable: Durable
) -> None:
    from sqlalchemy import text

    tickets.apply_async(kwargs={"title": "printer"}, execution_id="t-9")
    clean = celery(sqlite_url, "verify")
    assert clean.returncode == 0 and "match their checksums" in clean.stdout
    with durable.db.engine.begin() as conn:
        conn.execute(text("UPDATE durable_checkpoints SET state = '{}' WHERE seq = 0"))
    damaged = celery(sqlite_url, "verify", "--json")
    assert damaged.returncode == 1
    assert json.loads(damaged.stdout) == [{"execution": "t-9", "seq": 0, "what": "checkpoint"}]
    shown = celery(sqlite_url, "history", "t-9")
    assert shown.returncode == 0 and "CORRUPTED" in shown.stdout
