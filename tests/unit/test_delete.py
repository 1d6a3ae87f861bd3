"""Deleting a run before retention, on SQLite and PostgreSQL: refused while it (or a child)
has not finished, forced by cancelling first, children with it, every row of each gone, an
audit line at WARNING and a count left behind; by id, by selection, from the CLI."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from types import SimpleNamespace

import pytest
from celery import Celery
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from celery_durable import Durable, ExecutionNotFound, RunStillActive, Status
from celery_durable.cli import durable as durable_command
from celery_durable.metrics import PrometheusHooks
from tests.unit import cli_app
from tests.unit.lifecycle_app import define, rows_left, settled, store_runs, tag

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def durable(app: Celery, database_url: str) -> Iterator[Durable]:
    """The unit tests' Durable, once on SQLite and once on PostgreSQL."""
    durable = Durable(app, database_url=database_url, eta_threshold=2.0)
    durable.migrate()
    yield durable
    durable.db.dispose()


Worker = Callable[[], AbstractContextManager[object]]


def test_a_run_that_waits_is_refused_and_nothing_is_deleted(durable: Durable, worker) -> None:
    parent, _ = define(durable)
    with worker():
        run = parent.apply_async(kwargs={"n": 1, "wait": True})
        child = f"{run.id}.spawn.1.c0"
        settled(durable, child, Status.WAITING)
        rows = rows_left(durable, [run.id, child])
        with pytest.raises(RunStillActive) as refused:
            durable.delete(run.id, by="ops", reason="erasure request")
        # The run and its child stay whole; the error names what still runs.
        assert refused.value.active == {run.id: "waiting", child: "waiting"}
        assert "force=True" in str(refused.value)
        assert rows_left(durable, [run.id, child]) == rows
        assert durable.delete(run.id, dry_run=True, force=True) == [run.id, child]
        assert rows_left(durable, [run.id, child]) == rows  # a dry run changes nothing


def test_force_cancels_the_run_and_its_children_then_deletes_them(
    durable: Durable, worker: Worker
) -> None:
    parent, _ = define(durable)
    with worker():
        run = parent.apply_async(kwargs={"n": 2, "wait": True})
        child = f"{run.id}.spawn.1.c0"
        settled(durable, child, Status.WAITING)
        assert durable.delete(run.id, by="ops", reason="GDPR", force=True) == [run.id, child]
    for gone in (run.id, child):
        with pytest.raises(ExecutionNotFound):
            durable.get(gone)
    assert rows_left(durable, [run.id, child]) == {}


def test_a_finished_run_goes_with_its_children_every_row_an_audit_line_and_a_count(
    durable: Durable, worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    durable.hooks = PrometheusHooks(registry, inner=durable.hooks)
    parent, _ = define(durable)
    with worker():
        run = parent.apply_async(kwargs={"n": 3, "wait": True})
        kept = parent.apply_async(kwargs={"n": 4})
        child = f"{run.id}.spawn.1.c0"
        settled(durable, child, Status.WAITING)
        durable.send_event(child, "go", {"note": "paid"})
        assert run.wait(timeout=20).n == 6 and kept.wait(timeout=20).n == 8
    tag(durable, run.id, "customer", "c-42")
    before = rows_left(durable, [run.id, child])
    # Every table a run owns holds rows of these two: the delete has them all to remove.
    assert set(before) == {
        "durable_executions",
        "durable_checkpoints",
        "durable_attempts",
        "durable_node_visits",
        "durable_events",
        "durable_emits",
        "durable_tags",
    }
    kept_rows = rows_left(durable, [kept.id, f"{kept.id}.spawn.1.c0"])

    with caplog.at_level(logging.WARNING, logger="celery_durable.engine.erasure"):
        assert durable.delete(run.id, by="ops@shop", reason="erasure request 17") == [
            run.id,
            child,
        ]

    assert rows_left(durable, [run.id, child]) == {}
    assert rows_left(durable, [kept.id, f"{kept.id}.spawn.1.c0"]) == kept_rows
    (line,) = [r for r in caplog.records if r.name == "celery_durable.engine.erasure"]
    assert line.levelno == logging.WARNING
    said = line.getMessage()
    assert "ops@shop" in said and "erasure request 17" in said and child in said
    assert line.execution_id == run.id and line.deleted == [run.id, child]  # type: ignore[attr-defined]
    counted = {
        labels: registry.get_sample_value("celery_durable_executions_deleted_total", {"graph": g})
        for labels, g in (("parent", "parent"), ("child", "child"))
    }
    assert counted == {"parent": 1.0, "child": 1.0}


def test_a_finished_parent_whose_child_still_waits_is_refused(
    durable: Durable, worker: Worker
) -> None:
    parent, _ = define(durable)
    with worker():
        run = parent.apply_async(kwargs={"n": 5, "wait": True, "join": False})
        child = f"{run.id}.spawn.1.c0"
        settled(durable, run.id, Status.SUCCEEDED)
        settled(durable, child, Status.WAITING)
        with pytest.raises(RunStillActive) as refused:
            durable.delete(run.id)
        assert refused.value.active == {child: "waiting"}
        assert durable.get(run.id).status == Status.SUCCEEDED
        assert durable.delete(child, force=True) == [child]  # the child alone, forced
    assert durable.delete(run.id) == [run.id]


def test_bulk_delete_takes_finished_runs_and_refuses_the_others(
    durable: Durable, worker: Worker
) -> None:
    _, child = define(durable)
    done = store_runs(durable, "child", 30)
    with worker():
        waiting = child.apply_async(kwargs={"n": 1, "wait": True})
        settled(durable, waiting.id, Status.WAITING)
    report = durable.bulk("delete", graph="child", by="ops", reason="cleanup")
    assert sorted(report.done) == done
    assert list(report.refused) == [waiting.id] and "waiting" in report.refused[waiting.id]
    assert rows_left(durable, done) == {} and waiting.status == Status.WAITING


def test_the_cli_deletes_by_id_and_by_selection_and_says_how_to_force(
    durable: Durable, worker: Worker
) -> None:
    _, child = define(durable)
    store_runs(durable, "child", 5)
    with worker():
        waits = child.delay(n=1, wait=True).id
        settled(durable, waits, Status.WAITING)
        refused = cli_app.invoke(durable, "delete", waits, "bulk-0000")
        assert refused.exit_code == 1
        assert "bulk-0000: deleted" in refused.output
        assert f"refused {waits}" in refused.output
        assert f"durable delete {waits} --force" in refused.output
        forced = cli_app.invoke(durable, "delete", waits, "--force", "--json")
        assert forced.exit_code == 0, forced.output
        assert json.loads(forced.output)["went"] == {waits: [waits]}

    usage = cli_app.invoke(durable, "delete", "--status", "succeeded", "--force")
    assert usage.exit_code == 2 and "--force applies to runs named by id" in usage.output
    # A selection asks first; no answer deletes nothing.
    asked = CliRunner().invoke(
        durable_command,
        ["delete", "--status", "succeeded"],
        obj=SimpleNamespace(app=durable.app),
        input="n\n",
    )
    assert asked.exit_code == 1 and "Delete 4 finished runs" in asked.output
    assert len(durable.list(status="succeeded")) == 4
    dry = cli_app.invoke(durable, "delete", "--status", "succeeded", "--dry-run")
    assert dry.exit_code == 0 and "delete would be applied to 4 of 4" in dry.output
    done = cli_app.invoke(durable, "delete", "--status", "succeeded", "--yes", "--by", "ops")
    assert done.exit_code == 0, done.output
    assert "delete: done for 4 of 4 selected runs" in done.output
    assert durable.list(status="succeeded") == []
