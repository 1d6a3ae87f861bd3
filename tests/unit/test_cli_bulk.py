"""Operations on a selection from the command line: `durable retry --status failed --graph G`,
a dry run first, each run audited, a summary of done and refused."""

from __future__ import annotations

import json

from celery_durable import Durable, Status
from celery_durable.testing import in_process_worker
from tests.unit import cli_app
from tests.unit.test_cli import celery
from tests.waiting import wait_for


def failed_runs(durable: Durable, n: int) -> list[str]:
    flaky = cli_app.define_flaky(durable)
    with in_process_worker(durable):
        runs = [flaky.delay() for _ in range(n)]
        wait_for(lambda: durable.status_counts().get("failed") == n, 180.0, 0.1)
    return sorted(run.id for run in runs)


def retried_by(durable: Durable, run_id: str) -> list[tuple[str, str]]:
    return [
        (cp.meta["by"], cp.meta["reason"])
        for cp in durable.get(run_id).history()
        if cp.meta and cp.meta.get("op") == "retry"
    ]


def test_200_failed_runs_are_listed_by_a_dry_run_then_retried_each_audited(
    durable: Durable, sqlite_url: str
) -> None:
    ids = failed_runs(durable, 200)
    selection = ["--status", "failed", "--graph", "flaky"]

    dry = celery(sqlite_url, "retry", *selection, "--dry-run", timeout=300)
    assert dry.returncode == 0, dry.stderr
    assert "retry would be applied to 200 of 200 selected runs" in dry.stdout
    assert sorted(line.split()[-1] for line in dry.stdout.splitlines()[1:]) == ids
    assert durable.status_counts() == {"failed": 200}  # nothing changed
    assert retried_by(durable, ids[0]) == []

    done = celery(
        sqlite_url, "retry", *selection, "--by", "ops", "--reason", "API is back", timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "retry: done for 200 of 200 selected runs, refused for 0" in done.stdout
    assert "retry: 200/200 runs (100%)" in done.stderr  # the progress, a line per tenth
    assert "retry: 20/200 runs (10%)" in done.stderr
    assert "failed" not in durable.status_counts()
    for run_id in ids:
        assert retried_by(durable, run_id) == [("ops", "API is back")]


def test_a_refusal_is_listed_with_why_and_the_others_are_done(durable: Durable) -> None:
    (failed,) = failed_runs(durable, 1)
    tickets = cli_app.define(durable)
    running = tickets.apply_async(kwargs={"title": "printer"}, execution_id="t-1")

    result = cli_app.invoke(durable, "cancel", "--status", "failed", "--status", "running")
    assert result.exit_code == 0, result.output
    assert "cancel: done for 2 of 2 selected runs, refused for 0" in result.stdout
    assert running.status == Status.CANCELLED and durable.get(failed).status == Status.CANCELLED

    again = cli_app.invoke(durable, "retry", "--graph", "tickets", "--json")
    assert again.exit_code == 1  # a refusal: scripts can tell
    report = json.loads(again.stdout)
    assert report["done"] == [] and list(report["refused"]) == ["t-1"]
    assert "retry does not apply to a run that is cancelled" in report["refused"]["t-1"]

    pause = cli_app.invoke(durable, "pause", "--graph", "tickets")
    assert pause.exit_code == 1
    assert "refused t-1: pause does not apply to a run that is cancelled" in pause.stdout


def test_an_id_with_a_selection_no_selection_or_an_empty_one_are_clear_errors(
    durable: Durable,
) -> None:
    (failed,) = failed_runs(durable, 1)

    both = cli_app.invoke(durable, "retry", failed, "--status", "failed")
    assert both.exit_code == 2
    assert "give either EXECUTION_ID or a selection (--status failed), not both" in both.stderr
    neither = cli_app.invoke(durable, "retry", "--by", "ops")
    assert neither.exit_code == 2 and "give an EXECUTION_ID, or a selection" in neither.stderr
    empty = cli_app.invoke(
        durable, "retry", "--status", "paused", "--graph", "flaky", "--since", "2h"
    )
    assert empty.exit_code == 1, empty.output
    assert "no run matches --status paused --graph flaky --since 2h; nothing was" in empty.stderr
    update = cli_app.invoke(durable, "resume", "--status", "paused", "--update", "{}")
    assert update.exit_code == 2 and "--update applies to one run" in update.stderr
    version = cli_app.invoke(durable, "upgrade", "--status", "failed", "--version", "1")
    assert version.exit_code == 2 and "--version applies to one run" in version.stderr
    assert durable.get(failed).history()[-1].kind == "failure"  # none of these changed it


def test_an_unknown_status_is_refused_with_the_valid_ones(durable: Durable) -> None:
    (failed,) = failed_runs(durable, 1)
    valid = "'pending', 'running', 'paused', 'waiting', 'succeeded', 'failed'"
    for command in (["ls"], ["retry"], ["cancel", "--dry-run"], ["resume"], ["upgrade"]):
        result = cli_app.invoke(durable, *command, "--status", "bogus")
        assert result.exit_code == 2, (command, result.output)
        assert "'bogus' is not one of" in result.stderr and valid in result.stderr
    assert durable.get(failed).status == Status.FAILED
    listed = cli_app.invoke(durable, "ls", "--status", "failed", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)] == [failed]


def test_one_run_by_id_takes_a_dry_run_too(durable: Durable) -> None:
    (failed,) = failed_runs(durable, 1)
    dry = cli_app.invoke(durable, "retry", failed, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"would retry: {failed}" in dry.stdout
    assert durable.get(failed).status == Status.FAILED
    done = cli_app.invoke(durable, "retry", failed, "--json")
    assert json.loads(done.stdout) == {"id": failed, "operation": "retry", "status": "running"}
