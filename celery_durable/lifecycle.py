"""What happens to a run's data once it is finished: retention's prune. A part of Durable,
kept apart so that the composition root stays about composing."""

from __future__ import annotations

from datetime import timedelta

from celery_durable.engine.retention import PruneReport, Retention, prune
from celery_durable.engine.runtime import Runtime
from celery_durable.persistence.database import Database
from celery_durable.persistence.migrate import uses_database


class Lifecycle:
    """Durable's methods on finished runs' data; Durable sets the attributes."""

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
    ) -> PruneReport:
        """Remove finished runs past retention (7 days succeeded, 30 failed, by default)."""
        keep = Retention(older_than, succeeded, failed)
        return prune(self.runtime, keep, batch=batch, dry_run=dry_run)
