"""Runs out to JSON lines and back, on SQLite and PostgreSQL: a round trip of 1,000 runs
leaves every row as it was and verify() clean; an altered line, an existing id, a missing
checksum key are refused with why; prune's archive writes each batch before deleting it,
and an archive that fails deletes nothing of its batch."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import inspect, update

from celery_durable import Durable, Status
from celery_durable.model.records import utcnow
from celery_durable.persistence.codec import Signer, dumps
from celery_durable.persistence.run_rows import run_tables
from celery_durable.persistence.schema import checkpoints, executions
from celery_durable.testing import embedded_app, throwaway_database
from tests.unit import cli_app
from tests.unit.lifecycle_app import define, rows_left, settled, store_runs, stored, tag

pytestmark = pytest.mark.timeout(300)
KEY = {"k1": "a-secret-of-at-least-16-chars"}


@pytest.fixture
def durable(app: Celery, database_url: str) -> Iterator[Durable]:
    """The unit tests' Durable, once on SQLite and once on PostgreSQL."""
    durable = Durable(app, database_url=database_url, eta_threshold=2.0)
    durable.migrate()
    yield durable
    durable.db.dispose()


@pytest.fixture
def other_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A second empty database of the same kind: where runs are moved to."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'other.sqlite3'}"
        return
    with throwaway_database(os.environ["CELERY_DURABLE_TEST_PG"]) as url:
        yield url


def client(url: str, **settings: object) -> Durable:
    durable = Durable(embedded_app("other"), database_url=url, **settings)
    durable.migrate()
    return durable


def varied_runs(durable: Durable, worker) -> list[str]:  # type: ignore[no-untyped-def]
    """Runs that leave a row in every table a run owns: a parent and the child it waited
    for (a failed attempt, an emitted value, an event), tagged."""
    parent, _ = define(durable)
    with worker():
        run = parent.delay(n=3, wait=True)
        child = f"{run.id}.spawn.1.c0"
        settled(durable, child, Status.WAITING)
        durable.send_event(child, "go", {"note": "paid"}, "psp-1")
        run.wait(timeout=20)
    tag(durable, run.id, "customer", "c-42")
    return [run.id, child]


def test_1000_runs_exported_deleted_and_imported_are_as_they_were(
    durable: Durable, worker, tmp_path: Path
) -> None:
    ids = varied_runs(durable, worker) + store_runs(durable, "child", 1000)
    histories = {run_id: durable.get(run_id).history() for run_id in ids}
    rows = stored(durable, ids)
    backup = tmp_path / "runs.jsonl"

    exported = durable.export(status="succeeded", to=backup)
    assert sorted(exported.done) == sorted(ids) and exported.refused == {}
    assert len(backup.read_text().splitlines()) == len(ids)  # a line per run, each once
    deleted = durable.bulk("delete", status="succeeded", by="ops", reason="round trip")
    assert deleted.refused == {} and rows_left(durable, ids) == {}

    imported = durable.import_runs(backup)
    assert imported.refused == {} and sorted(imported.done) == sorted(ids)
    assert durable.verify() == []
    assert {run_id: durable.get(run_id).history() for run_id in ids} == histories
    assert stored(durable, ids) == rows  # every row of every table, as it was


def lines_of(durable: Durable, ids: Sequence[str], tmp_path: Path) -> list[str]:
    path = tmp_path / "some.jsonl"
    assert durable.export(list(ids), to=path).refused == {}
    return path.read_text().splitlines()


def test_an_altered_line_is_refused_and_nothing_of_its_run_is_written(
    durable: Durable, tmp_path: Path
) -> None:
    ids = store_runs(durable, "child", 4)
    tampered, intact, forged, cut = lines_of(durable, ids, tmp_path)
    assert '\\"type\\":\\"E\\"' in tampered
    # An attempt's error changed: such rows carry no checksum; the line's covers them.
    tampered = tampered.replace('\\"type\\":\\"E\\"', '\\"type\\":\\"F\\"')
    # A checkpoint's state changed, the line's checksum made again (a checksum without a
    # key is anyone's to make): the checkpoint's own checksum still says no.
    body = json.loads(forged)
    body["tables"]["durable_checkpoints"][1]["output"] = '{"n":5}'
    del body["checksum"]
    body["checksum"] = Signer().sign((dumps(body),))
    forged = dumps(body)
    for run_id in ids:
        durable.delete(run_id)

    report = durable.import_runs([tampered, intact, forged, cut[: len(cut) // 2], ""])

    assert report.done == [ids[1]]
    assert "changed after it was exported" in report.refused["line 1"]
    assert "checkpoint 1 does not match its checksum" in report.refused["line 3"]
    assert "is not JSON" in report.refused["line 4"]
    assert rows_left(durable, [ids[0], *ids[2:]]) == {}
    assert durable.verify() == []


def test_an_id_this_database_holds_is_refused_and_left_as_it_is(
    durable: Durable, tmp_path: Path
) -> None:
    ids = store_runs(durable, "child", 2)
    lines = lines_of(durable, ids, tmp_path)
    durable.delete(ids[1])
    rows = stored(durable, ids[:1])

    report = durable.import_runs(lines)

    assert report.done == [ids[1]]
    assert list(report.refused) == ["line 1"]
    assert f"Execution '{ids[0]}' already exists" in report.refused["line 1"]
    assert stored(durable, ids[:1]) == rows


def test_keyed_checksums_need_the_key_where_the_runs_are_imported(
    database_url: str, other_url: str, tmp_path: Path
) -> None:
    keyed = client(database_url, checksum_keys=KEY)
    ids = store_runs(keyed, "child", 3)
    lines = lines_of(keyed, ids, tmp_path)
    assert json.loads(lines[0])["checksum"].startswith("h:k1:")
    unkeyed, also_keyed = client(other_url), client(other_url, checksum_keys=KEY)
    try:
        refused = unkeyed.import_runs(lines)
        assert refused.done == [] and len(refused.refused) == 3
        assert (
            "signed with key 'k1', which checksum_keys does not hold" in (refused.refused["line 1"])
        )
        assert rows_left(unkeyed, ids) == {}

        assert also_keyed.import_runs(lines).done == ids
        assert also_keyed.verify() == []
    finally:
        for durable in (keyed, unkeyed, also_keyed):
            durable.db.dispose()


def test_runs_moved_to_another_database_keep_their_events_and_new_ones_follow(
    durable: Durable, worker, other_url: str, tmp_path: Path
) -> None:
    ids = store_runs(durable, "child", 30)
    lines = lines_of(durable, ids, tmp_path)
    other = client(other_url)
    try:
        assert other.import_runs(lines).done == ids
        assert other.verify() == []
        # The imported events keep their ids; one sent now takes the next free id.
        kept = [e.id for e in durable_events(other, ids)]
        assert kept == [e.id for e in durable_events(durable, ids)]
        child = define(other)[1]
        waiting = child.apply_async(kwargs={"n": 1, "wait": True})
        sent = other.send_event(waiting.id, "go", {"note": "x"})
        assert sent.id > max(kept)
    finally:
        other.db.dispose()


def durable_events(durable: Durable, ids: list[str]):  # type: ignore[no-untyped-def]
    return [
        event
        for run_id in ids
        for event in [durable.runtime.events.first(run_id, "go", ())]
        if event is not None
    ]


def _age(durable: Durable, ids: list[str], days: int) -> None:
    with durable.db.engine.begin() as conn:
        conn.execute(
            update(executions)
            .where(executions.c.id.in_(ids))
            .values(finished_at=utcnow() - timedelta(days=days))
        )


def test_prune_archives_each_batch_before_deleting_it(durable: Durable, tmp_path: Path) -> None:
    old, new = store_runs(durable, "child", 25, "old"), store_runs(durable, "child", 3, "new")
    _age(durable, old, days=8)
    histories = {run_id: durable.get(run_id).history() for run_id in old}

    report = durable.prune(batch=10, archive=tmp_path / "archive")

    assert report.removed["succeeded"] == 25 and report.archived == 25
    files = sorted((tmp_path / "archive").iterdir())
    assert [len(f.read_text().splitlines()) for f in files] == [10, 10, 5]  # a file per batch
    assert rows_left(durable, old) == {} and len(stored(durable, new)) == 3
    for archived in files:
        assert durable.import_runs(archived).refused == {}
    assert {run_id: durable.get(run_id).history() for run_id in old} == histories


def test_an_archive_that_fails_deletes_nothing_of_its_batch(durable: Durable) -> None:
    old = store_runs(durable, "child", 25, "old")
    _age(durable, old, days=8)
    taken: list[int] = []

    def archive(lines: Sequence[str]) -> None:
        if taken:
            raise OSError("the bucket is full")
        taken.append(len(lines))

    with pytest.raises(OSError, match="bucket is full"):
        durable.prune(batch=10, archive=archive)

    assert taken == [10]  # the first batch was archived and deleted, the second neither
    assert len(stored(durable, old)) == 15


def test_a_damaged_run_is_refused_by_export_and_kept_by_prune(
    durable: Durable, tmp_path: Path
) -> None:
    ids = store_runs(durable, "child", 3)
    with durable.db.engine.begin() as conn:
        conn.execute(
            update(checkpoints)
            .where(checkpoints.c.execution_id == ids[1], checkpoints.c.seq == 1)
            .values(output='{"n":99}')
        )
    exported = durable.export(ids, to=tmp_path / "x.jsonl")
    assert exported.done == [ids[0], ids[2]]
    assert "Checkpoint 1 of execution" in exported.refused[ids[1]]

    _age(durable, ids, days=8)
    pruned = durable.prune(archive=tmp_path / "archive")
    assert pruned.removed["succeeded"] == 2 and list(pruned.kept) == [ids[1]]
    assert rows_left(durable, [ids[1]]) != {}


def test_the_cli_exports_imports_and_prunes_with_an_archive(
    durable: Durable, tmp_path: Path
) -> None:
    ids = store_runs(durable, "child", 30)
    out = tmp_path / "all.jsonl"
    exported = cli_app.invoke(durable, "export", "--all", "-o", str(out))
    assert exported.exit_code == 0, exported.output
    assert "exported 30 runs, refused 0" in exported.output
    to_stdout = cli_app.invoke(durable, "export", ids[0], ids[1])
    assert [json.loads(line)["id"] for line in to_stdout.stdout.splitlines()] == ids[:2]

    _age(durable, ids, days=8)
    pruned = cli_app.invoke(durable, "prune", "--archive-to", str(tmp_path / "a"))
    assert pruned.exit_code == 0, pruned.output
    assert "removed 30 executions" in pruned.output and "archived 30 runs to" in pruned.output

    imported = cli_app.invoke(durable, "import", str(out))
    assert imported.exit_code == 0 and "imported 30 runs, refused 0" in imported.output
    again = cli_app.invoke(durable, "import", str(out), "--json")
    assert again.exit_code == 1
    assert len(json.loads(again.stdout)["refused"]) == 30


def test_every_table_that_holds_runs_rows_travels_with_them(durable: Durable) -> None:
    # The migrated schema's foreign keys to the runs, against what an export reads: a table
    # a revision adds whose module nothing imports would silently stay behind.
    schema = inspect(durable.db.engine)
    holding = {
        name
        for name in schema.get_table_names()
        if any(fk["referred_table"] == "durable_executions" for fk in schema.get_foreign_keys(name))
    }
    assert {t.name for t in run_tables()} == holding | {"durable_executions"}


def test_a_line_of_another_format_version_or_table_is_refused(
    durable: Durable, tmp_path: Path
) -> None:
    (line,) = lines_of(durable, store_runs(durable, "child", 1), tmp_path)
    durable.delete("bulk-0000")
    newer = json.loads(line) | {"version": 2}
    unknown = json.loads(line)
    unknown["tables"]["durable_future"] = [{"execution_id": "bulk-0000"}]
    for body in (newer, unknown):
        del body["checksum"]
        body["checksum"] = Signer().sign((dumps(body),))

    report = durable.import_runs([dumps(newer), dumps(unknown)])

    assert "format version 2" in report.refused["line 1"]
    assert "table 'durable_future'" in report.refused["line 2"]
    assert rows_left(durable, ["bulk-0000"]) == {}


def test_encrypted_states_travel_sealed_and_open_with_the_key_where_imported(
    database_url: str, other_url: str, tmp_path: Path
) -> None:
    key = {"e1": base64.b64encode(os.urandom(32)).decode()}
    sealed = client(database_url, encryption_keys=key)
    ids = store_runs(sealed, "child", 2)
    lines = lines_of(sealed, ids, tmp_path)
    assert '"state":"e:e1:' in lines[0]  # as stored: the plain state is nowhere in the line
    without, holding = client(other_url), client(other_url, encryption_keys=key)
    try:
        refused = without.import_runs(lines)
        assert refused.done == [] and "encrypted with key 'e1'" in refused.refused["line 1"]
        assert holding.import_runs(lines).done == ids
        assert holding.get(ids[1]).record.state == {"n": 2} and holding.verify() == []
    finally:
        for durable in (sealed, without, holding):
            durable.db.dispose()


def test_an_export_by_tag_writes_that_customers_runs_only(durable: Durable) -> None:
    ids = store_runs(durable, "child", 6)
    for run_id in ids[:2]:
        tag(durable, run_id, "customer", "c-42")
    tag(durable, ids[2], "customer", "c-7")
    written = cli_app.invoke(durable, "export", "--tag", "customer=c-42")
    assert written.exit_code == 0, written.output
    assert sorted(json.loads(line)["id"] for line in written.stdout.splitlines()) == ids[:2]
