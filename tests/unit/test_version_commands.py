"""Graph versions on the command line: `durable versions` lists what this code defines, what
live workers serve and the runs of each version; `durable upgrade` moves a run; `durable show`
says a run's version and draws its own version's graph.

The commands run in this process (click's runner), on the test's Durable and database, so an
in-process worker's fleet rows are the ones the command reads.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager

from celery import Celery
from click.testing import CliRunner, Result
from pydantic import BaseModel

from celery_durable import Durable, Graph, Status, cli
from celery_durable.cli.common import Obj
from celery_durable.model.cursor import Cursor
from celery_durable.testing import embedded_app


class Parcel(BaseModel):
    path: list[str] = []


def define(durable: Durable) -> tuple[Graph, Graph]:
    """Version 1 reviews then ships; version 2 reviews then audits. Both wait for an operator
    before their review, so a run started on either parks there without a worker."""
    v1 = durable.graph("parcel", state=Parcel, version="1")

    @v1.node(interrupt_before=True)
    def review(parcel: Parcel) -> dict[str, object]:
        return {"path": [*parcel.path, "review"]}

    @v1.node
    def ship(parcel: Parcel) -> dict[str, object]:
        return {"path": [*parcel.path, "ship"]}

    v1.entry(review)
    v1.edge(review, ship)

    v2 = durable.graph("parcel", state=Parcel, version="2")

    @v2.node(interrupt_before=True, name="review")
    def review_again(parcel: Parcel) -> dict[str, object]:
        return {"path": [*parcel.path, "review"]}

    @v2.node
    def audit(parcel: Parcel) -> dict[str, object]:
        return {"path": [*parcel.path, "audit"]}

    v2.entry(review_again)
    v2.edge(review_again, audit)
    return v1, v2


def durable_cli(app: Celery, *args: str) -> Result:
    """``celery -A app durable ARGS``, run here."""
    return CliRunner().invoke(cli.durable, list(args), obj=Obj(app))


def said(result: Result) -> str:
    """The output with each run of spaces and line breaks as one space: what a table says,
    whatever its column widths and line wrapping."""
    return " ".join(result.stdout.split())


def started_by_older_code(database_url: str) -> str:
    """A run started by a deploy whose code had version 0 of the graph: another app, the same
    database."""
    older = Durable(embedded_app(f"older-{uuid.uuid4().hex[:8]}"), database_url)
    v0 = older.graph("parcel", state=Parcel, version="0")

    @v0.node(interrupt_before=True)
    def weigh(parcel: Parcel) -> dict[str, object]:
        return {"path": [*parcel.path, "weigh"]}

    v0.entry(weigh)
    try:
        return v0.delay().id
    finally:
        older.db.dispose()


def started_before_versions(durable: Durable) -> str:
    """A run stored before runs were pinned: its cursor names no version."""
    record, _ = durable.store.create_execution(
        execution_id="before-versions",
        graph="parcel",
        fingerprint="f",
        state={"path": []},
        cursor=Cursor.start("review"),
    )
    return record.id


def test_versions_lists_both_versions_with_their_runs_and_workers(
    app: Celery, durable: Durable, worker: Callable[[], AbstractContextManager[object]]
) -> None:
    # Given two versions side by side, two runs parked on version 1 and one on version 2
    v1, v2 = define(durable)
    old = [v1.delay(), v1.delay()]
    v2.delay()
    assert [run.version for run in old] == ["1", "1"]

    # When no worker runs: both are defined here, newest first, and neither is deployed
    listed = durable_cli(app, "versions", "--json")
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == [
        {
            "graph": "parcel",
            "version": "2",
            "in_code": True,
            "newest": True,
            "deployed": False,
            "workers": [],
            "runs": {"waiting": 1},
            "unfinished": 1,
            "drained": False,
        },
        {
            "graph": "parcel",
            "version": "1",
            "in_code": True,
            "newest": False,
            "deployed": False,
            "workers": [],
            "runs": {"waiting": 2},
            "unfinished": 2,
            "drained": False,
        },
    ]
    table = said(durable_cli(app, "versions"))
    assert "parcel 2 newest not deployed waiting 1 parcel 1 yes not deployed waiting 2" in table
    assert "have unfinished runs: parcel@2 (1 unfinished), parcel@1 (2 unfinished)." in table

    # When a worker with both versions runs: it serves each, on its routing key
    with worker():
        rows = json.loads(durable_cli(app, "versions", "--json").stdout)
        table = said(durable_cli(app, "versions"))
    served = {row["version"]: row["workers"] for row in rows}
    assert served.keys() == {"1", "2"}
    for workers in served.values():
        assert len(workers) == 1 and workers[0]["worker"].endswith("@localhost")
        assert workers[0]["routing_keys"]
    name, key = served["1"][0]["worker"], served["1"][0]["routing_keys"][0]
    assert f"{name} on {key}" in table and "No live worker serves" not in table

    # When version 1's runs end: it is drained
    for run in old:
        run.cancel(reason="version 1 retired")
    rows = json.loads(durable_cli(app, "versions", "--graph", "parcel", "--json").stdout)
    assert [(r["version"], r["drained"], r["runs"]) for r in rows] == [
        ("2", False, {"waiting": 1}),
        ("1", True, {"cancelled": 2}),
    ]
    assert "parcel 1 yes not deployed drained: cancelled 2" in said(durable_cli(app, "versions"))
    assert json.loads(durable_cli(app, "versions", "--graph", "other", "--json").stdout) == []


def test_versions_only_runs_know_and_unpinned_runs_are_listed(
    app: Celery, durable: Durable, sqlite_url: str
) -> None:
    # Given a run pinned to a version this code no longer has, and one started before versions
    define(durable)
    started_by_older_code(sqlite_url)
    started_before_versions(durable)

    rows = json.loads(durable_cli(app, "versions", "--json").stdout)
    assert [(r["version"], r["in_code"], r["newest"], r["runs"]) for r in rows] == [
        ("2", True, True, {}),
        ("1", True, False, {}),
        ("0", False, False, {"waiting": 1}),
        (None, False, False, {"running": 1}),
    ]
    table = said(durable_cli(app, "versions"))
    assert "parcel 2 newest not deployed no runs parcel 1 yes not deployed no runs" in table
    assert "parcel 0 - not deployed waiting 1 parcel (unpinned) - not deployed running 1" in table
    assert "have unfinished runs: parcel@0 (1 unfinished). They stop" in table
    assert "durable upgrade ID" in table


def test_upgrade_moves_a_run_waiting_at_an_interrupt_onto_the_new_path(
    app: Celery, durable: Durable, worker: Callable[[], AbstractContextManager[object]]
) -> None:
    # Given a run parked at version 1's review
    v1, _ = define(durable)
    run = v1.delay()
    assert run.status == Status.WAITING

    # When an operator moves it onto version 2
    moved = durable_cli(
        app, "upgrade", run.id, "--version", "2", "--by", "ops", "--reason", "v1 out"
    )

    # Then it says so, the move is audited, and the run goes on on version 2's path
    assert moved.exit_code == 0, moved.output
    assert moved.stdout.strip() == f"moved {run.id} from version 1 to 2; status waiting"
    assert "no live worker serves version 2 of parcel" in moved.stderr
    assert run.version == "2"
    audit = run.history()[-1].meta or {}
    assert (audit.get("op"), audit.get("by"), audit.get("reason")) == ("upgrade", "ops", "v1 out")
    with worker():
        run.resume()
        done = run.wait(timeout=10)
    assert isinstance(done, Parcel) and done.path == ["review", "audit"]


def test_upgrade_to_an_unknown_version_is_refused_in_one_line(
    app: Celery, durable: Durable
) -> None:
    v1, _ = define(durable)
    run = v1.delay()

    refused = durable_cli(app, "upgrade", run.id, "--version", "9")

    assert refused.exit_code == 1
    assert f"Cannot upgrade execution '{run.id}' to version '9'" in refused.stderr
    assert "defines versions 1, 2 of graph 'parcel'" in refused.stderr
    assert "Nothing was changed." in refused.stderr
    assert refused.exception is None or isinstance(refused.exception, SystemExit)
    assert run.version == "1" and run.status == Status.WAITING


def test_show_prints_the_version_and_draws_that_version(
    app: Celery, durable: Durable, sqlite_url: str
) -> None:
    v1, _ = define(durable)
    run = v1.delay()

    result = durable_cli(app, "show", run.id)
    assert result.exit_code == 0, result.output
    shown = result.stdout
    assert f"{run.id}  graph=parcel  version=1  status=waiting" in shown
    assert "ship" in shown and "audit" not in shown
    data = json.loads(durable_cli(app, "show", run.id, "--json").stdout)
    assert data["graph_version"] == "1" and set(data["nodes"]) <= {"review", "ship"}

    run.upgrade("2")
    shown = durable_cli(app, "show", run.id).stdout
    assert "version=2" in shown and "audit" in shown and "ship" not in shown

    # A version this process does not define: drawn as the newest, and said so
    shown = durable_cli(app, "show", started_by_older_code(sqlite_url)).stdout
    assert "version=0" in shown
    assert "version 0 is not defined in this process: drawn as version 2" in shown
    unpinned = durable_cli(app, "show", started_before_versions(durable)).stdout
    assert "version=unpinned (runs on the newest)" in unpinned and "audit" in unpinned
    assert "not defined in this process" not in unpinned
