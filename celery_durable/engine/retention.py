"""Retention: finished runs are removed after a while, in batches, one transaction each.

Defaults: succeeded runs after 7 days; failed, compensated and cancelled runs after 30. A run
that is running, paused, waiting, compensating or needs intervention is never removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from celery_durable.engine.runtime import Runtime
from celery_durable.model.records import utcnow
from celery_durable.status import Status

KEEP_FAILED = (Status.FAILED, Status.COMPENSATED, Status.CANCELLED)


@dataclass(slots=True)
class PruneReport:
    removed: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def total(self) -> int:
        return sum(self.removed.values())


def prune(
    runtime: Runtime,
    older_than: timedelta | None = None,
    *,
    succeeded: timedelta | None = None,
    failed: timedelta | None = None,
    batch: int = 500,
    dry_run: bool = False,
) -> PruneReport:
    """Remove finished runs; ``older_than`` sets one age for every finished status."""
    settings, store = runtime.settings, runtime.store
    keep = {
        Status.SUCCEEDED: older_than
        or succeeded
        or timedelta(days=settings.retention_succeeded_days),
    }
    for status in KEEP_FAILED:
        keep[status] = older_than or failed or timedelta(days=settings.retention_failed_days)
    now = utcnow()
    report = PruneReport(dry_run=dry_run)
    for status, age in keep.items():
        cutoff = now - age
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
