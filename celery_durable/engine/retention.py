"""Retention: finished runs are removed after a while, in batches, one transaction each.

Defaults: succeeded runs after 7 days; failed, compensated and cancelled runs after 30. A run
that is running, paused, waiting, compensating or needs intervention is never removed.

With an archive, each batch's runs are exported (a line per run, as ``durable export``
writes them) and handed to it inside the batch's transaction, before the delete: an archive
that raises rolls the batch back, deleting nothing of it. A run that fails its checksums is
neither archived nor deleted; the report names it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery_durable.engine.backup import Archive
from celery_durable.engine.runtime import Runtime
from celery_durable.errors import DurableError
from celery_durable.model.records import utcnow
from celery_durable.persistence import run_rows
from celery_durable.persistence.archive import run_line
from celery_durable.persistence.run_rows import PruneBatch
from celery_durable.settings import Settings
from celery_durable.status import Status

KEEP_FAILED = (Status.FAILED, Status.COMPENSATED, Status.CANCELLED)
logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Retention:
    """How long finished runs are kept: ``older_than`` for every finished status, else
    ``succeeded`` and ``failed`` (also compensated and cancelled); what is None falls back to
    the settings' retention days."""

    older_than: timedelta | None = None
    succeeded: timedelta | None = None
    failed: timedelta | None = None

    def cutoffs(self, settings: Settings, now: datetime) -> dict[Status, datetime]:
        """For each finished status, the end time before which its runs go."""
        succeeded = _first(
            self.older_than, self.succeeded, timedelta(days=settings.retention_succeeded_days)
        )
        failed = _first(
            self.older_than, self.failed, timedelta(days=settings.retention_failed_days)
        )
        cutoffs = {Status.SUCCEEDED: now - succeeded}
        for status in KEEP_FAILED:
            cutoffs[status] = now - failed
        return cutoffs


def _first(*ages: timedelta | None) -> timedelta:
    """The first age given: ``timedelta(0)`` (prune every finished run) is one."""
    return next(age for age in ages if age is not None)


@dataclass(slots=True)
class PruneReport:
    """``removed``: runs deleted, by status (a dry run: would be); ``archived``: how many
    of them the archive took first; ``kept``: run -> why it stayed, though past retention
    (with an archive: it failed its checksums, so it was neither archived nor deleted)."""

    removed: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False
    archived: int = 0
    kept: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.removed.values())


def prune(
    runtime: Runtime,
    retention: Retention,
    *,
    batch: int = 500,
    dry_run: bool = False,
    archive: Archive | None = None,
) -> PruneReport:
    """Remove finished runs past ``retention``, ``batch`` per transaction (a dry run
    counts); with ``archive``, each batch goes to it first, in the same transaction."""
    store = runtime.store
    report = PruneReport(dry_run=dry_run)
    for status, cutoff in retention.cutoffs(runtime.settings, utcnow()).items():
        if dry_run:
            report.removed[str(status)] = store.count_prunable(status, cutoff)
            continue
        removed = 0
        while True:
            with run_rows.prune_batch(store.db, status, cutoff, batch, report.kept) as found:
                gone = found.ids if archive is None else _archived(runtime, found, archive, report)
                found.remove(gone)
            removed += len(gone)
            if len(found.ids) < batch:
                break
        report.removed[str(status)] = removed
    return report


def _archived(
    runtime: Runtime, found: PruneBatch, archive: Archive, report: PruneReport
) -> list[str]:
    """Hand the batch's runs to ``archive``; the ids to delete: those it took."""
    lines, taken = [], []
    for run in found.rows():
        try:
            lines.append(run_line(run, runtime.store.sealer))
        except DurableError as damaged:
            report.kept[run.execution_id] = str(damaged)
            logger.warning(
                "prune keeps execution %s past retention: it cannot be archived (%s)",
                run.execution_id,
                damaged,
            )
            continue
        taken.append(run.execution_id)
    if lines:
        archive(lines)
    report.archived += len(taken)
    return taken
