"""Backup and restore: runs out to JSON lines and back in (persistence/archive.py says what
a line holds), and the directory prune archives into.

Checksums are verified both ways. An export checks every execution row and checkpoint as a
read that decides would, and refuses a run that does not verify, so a backup never carries
damage unnoticed. An import checks each line, then each row, before it writes anything of
that run; a run is written in one transaction, and never over a run this database holds.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path

from celery_durable.engine import bulk
from celery_durable.engine.bulk import BulkReport
from celery_durable.engine.runtime import Runtime
from celery_durable.errors import DurableError
from celery_durable.model.records import utcnow
from celery_durable.persistence import run_rows
from celery_durable.persistence.archive import read_line, run_line
from celery_durable.status import Status

# Runs read per transaction by an export.
CHUNK = 100

Archive = Callable[[Sequence[str]], object]
"""What prune hands each batch's runs to before it deletes them: one line per run, as
``durable export`` writes them (without newlines). Whatever it raises rolls the batch back."""


def selected(
    runtime: Runtime,
    ids: Iterable[str] | None = None,
    *,
    status: Status | str | Iterable[Status | str] | None = None,
    graph: str | None = None,
    since: datetime | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """The ids given, or those of the runs that match the filters (at least one), newest
    first, as ``durable.bulk`` selects them."""
    if ids is not None:
        return iter(ids)
    runs = bulk.selection(runtime, status=status, graph=graph, since=since, tags=tags)
    return (run if isinstance(run, str) else run.id for run in runs)


def export_runs(
    runtime: Runtime, roots: Iterable[str], write: Callable[[str], object]
) -> BulkReport:
    """Write a line per run of ``roots`` and of every run below them (their children, which
    a delete takes with them), each once; ``write`` gets each line with its newline."""
    store = runtime.store
    report = BulkReport("export", dry_run=False)
    pending: deque[str] = deque()
    seen: set[str] = set()
    given = iter(roots)
    while chunk := _next(given, pending, seen):
        found, below = run_rows.snapshot(store.db, chunk)
        pending.extend(below)
        for execution_id in chunk:
            run = found.get(execution_id)
            if run is None:
                report.refused[execution_id] = "no such run"
                continue
            try:
                line = run_line(run, store.sealer)
            except DurableError as refused:
                report.refused[execution_id] = str(refused)
                continue
            write(line + "\n")
            report.done.append(execution_id)
    return report


def _next(given: Iterator[str], pending: deque[str], seen: set[str]) -> list[str]:
    """The next ids to export, children found so far first, none twice."""
    chunk: list[str] = []
    while len(chunk) < CHUNK:
        execution_id = pending.popleft() if pending else next(given, None)
        if execution_id is None:
            break
        if execution_id not in seen:
            seen.add(execution_id)
            chunk.append(execution_id)
    return chunk


def import_runs(runtime: Runtime, lines: Iterable[str]) -> BulkReport:
    """Restore the run of each line: refused (with why, by line) when the line or a row of
    it does not verify, or its id is taken here; each run written in one transaction."""
    store = runtime.store
    report = BulkReport("import", dry_run=False)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            run = read_line(line, store.sealer, f"Line {number}")
            run_rows.restore(store.db, run)
        except DurableError as refused:
            report.refused[where] = str(refused)
        else:
            report.done.append(run.execution_id)
    return report


class DirectoryArchive:
    """Prune's archive into a directory: a file per batch, ``runs-<UTC time>.jsonl``, on
    disk (fsynced) before the batch's delete commits. Written under a temporary name and
    renamed, so a file there is always whole; a file whose delete then failed holds runs
    the database still has, which an import refuses as existing, so nothing is doubled."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def __call__(self, lines: Sequence[str]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = utcnow().strftime("%Y%m%dT%H%M%S%fZ")
        final = self.directory / f"runs-{stamp}.jsonl"
        n = 1
        while final.exists():
            n += 1
            final = self.directory / f"runs-{stamp}-{n}.jsonl"
        partial = final.with_name(final.name + ".partial")
        with open(partial, "x", encoding="utf-8") as out:
            out.writelines(line + "\n" for line in lines)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, final)
        _sync_directory(self.directory)


def _sync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; Windows has no directory handles)."""
    if os.name != "posix":
        return
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
