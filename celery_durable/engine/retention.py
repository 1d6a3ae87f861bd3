"""Retention: finished runs are removed after a while, in batches, one transaction each.

Defaults: succeeded runs after 7 days; failed, compensated and cancelled runs after 30. A run
that is running, paused, waiting, compensating or needs intervention is never removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery_durable.engine.runtime import Runtime
from celery_durable.model.records import utcnow
from celery_durable.settings import Settings
from celery_durable.status import Status

KEEP_FAILED = (Status.FAILED, Status.COMPENSATED, Status.CANCELLED)


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
    removed: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def total(self) -> int:
        return sum(self.removed.values())


def prune(
    runtime: Runtime, retention: Retention, *, batch: int = 500, dry_run: bool = False
) -> PruneReport:
    """Remove finished runs past ``retention``, ``batch`` per transaction (a dry run counts)."""
    store = runtime.store
    report = PruneReport(dry_run=dry_run)
    for status, cutoff in retention.cutoffs(runtime.settings, utcnow()).items():
        if dry_run:
            report.removed[str(status)] = store.count_prunable(status, cutoff)
            continue
        removed = 0
        while (done := store.prune_batch(status, cutoff, batch)) > 0:
            removed += done
            if done < batch:
                break
        report.removed[str(status)] = removed
    return report
