"""What happens to runs' data past their work: retention's prune (archiving what it deletes
if asked), deleting a run before then, and runs out to JSON lines and back. A part of
Durable, kept apart so that the composition root stays about composing."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Protocol, TextIO

from celery_durable.engine import backup, erasure
from celery_durable.engine.backup import Archive, DirectoryArchive
from celery_durable.engine.bulk import BulkReport
from celery_durable.engine.retention import PruneReport, Retention, prune
from celery_durable.engine.runtime import Runtime
from celery_durable.persistence.database import Database
from celery_durable.persistence.migrate import uses_database
from celery_durable.status import Status

PathLike = str | os.PathLike[str]


class Writable(Protocol):
    """Where an export goes: a text file, or anything with its ``write``."""

    def write(self, text: str, /) -> object: ...


class Lifecycle:
    """Durable's methods on runs' data; Durable sets the attributes."""

    db: Database
    runtime: Runtime

    @uses_database()
    def prune(
        self,
        older_than: timedelta | None = None,
        *,
        succeeded: timedelta | None = None,
        failed: timedelta | None = None,
        batch: int = 500,
        dry_run: bool = False,
        archive: Archive | PathLike | None = None,
    ) -> PruneReport:
        """Remove finished runs past retention (7 days succeeded, 30 failed, by default).

        ``archive``: a directory (a file of JSON lines per batch goes there), or a callable
        given each batch's runs as JSON lines; either way before the batch is deleted, in
        its transaction, so an archive that fails deletes nothing of its batch."""
        keep = Retention(older_than, succeeded, failed)
        if archive is not None and not callable(archive):
            archive = DirectoryArchive(archive)
        return prune(self.runtime, keep, batch=batch, dry_run=dry_run, archive=archive)

    @uses_database()
    def delete(
        self,
        execution_id: str,
        *,
        by: str | None = None,
        reason: str | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> list[str]:
        """Delete a run now, with the child runs it started, every row of each; returns
        their ids. Refused (RunStillActive) while one of them has not finished, unless
        ``force``, which cancels them first. Logged at WARNING with ``by`` and ``reason``."""
        return erasure.delete(
            self.runtime, execution_id, by=by, reason=reason, force=force, dry_run=dry_run
        )

    @uses_database()
    def export(
        self,
        ids: str | Iterable[str] | None = None,
        *,
        to: Writable | PathLike,
        status: Status | str | Iterable[Status | str] | None = None,
        graph: str | None = None,
        since: datetime | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> BulkReport:
        """Write runs as JSON lines to ``to`` (a file or a path): the ``ids`` given, or
        those that match ``status``, ``graph``, ``since`` and ``tags``, each with its child
        runs.
        ``refused`` in the report: runs not found, or that fail their checksums."""
        roots = backup.selected(
            self.runtime,
            [ids] if isinstance(ids, str) else ids,
            status=status,
            graph=graph,
            since=since,
            tags=tags,
        )
        if not isinstance(to, str | os.PathLike):
            return backup.export_runs(self.runtime, roots, to.write)
        with open(to, "w", encoding="utf-8") as out:
            return backup.export_runs(self.runtime, roots, out.write)

    @uses_database(creates=True)
    def import_runs(self, source: TextIO | PathLike | Iterable[str]) -> BulkReport:
        """Restore the runs of an export (a file, a path, or its lines), each checked first:
        ``refused`` in the report, by line, says why one was not (altered, an id this
        database holds, a key missing here)."""
        if not isinstance(source, str | os.PathLike):
            return backup.import_runs(self.runtime, source)
        with open(source, encoding="utf-8") as lines:
            return backup.import_runs(self.runtime, lines)
