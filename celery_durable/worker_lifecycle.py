"""What a worker of one Durable does around its life, on Celery's worker signals: refuse to
start on a broken graph or an unmigrated schema, join the fleet with the graph versions it
serves, put the run fields (and JSON, if asked) on its log records, sweep while it runs,
leave the fleet when it stops."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_init,
    worker_ready,
    worker_shutdown,
)
from sqlalchemy.exc import SQLAlchemyError

from celery_durable import logs
from celery_durable.engine.definition import GraphDefinition
from celery_durable.engine.fleet import Member
from celery_durable.engine.recovery import RecoveryLoop
from celery_durable.engine.runtime import Runtime
from celery_durable.errors import GraphDefinitionError, SchemaNotMigrated
from celery_durable.persistence import migrate
from celery_durable.persistence.database import Database
from celery_durable.tasks.forwarding import consume_versions
from celery_durable.tasks.registry import NodeTasks
from celery_durable.tasks.routing import check_queues

logger = logging.getLogger(__name__)


class WorkerLifecycle:
    """Connected to the worker signals for ``app``; ``definitions`` gives every version of
    every graph the app defines, read when the worker starts (after its modules loaded)."""

    def __init__(
        self,
        app: Celery,
        runtime: Runtime,
        db: Database,
        tasks: NodeTasks,
        definitions: Callable[[], list[GraphDefinition]],
    ) -> None:
        self.app, self.runtime, self.db, self.tasks = app, runtime, db, tasks
        self.definitions = definitions
        self.recovery = RecoveryLoop(runtime)
        # This worker in the fleet's rows, once it is one (worker_init).
        self.member: Member | None = None
        worker_init.connect(self.on_init, weak=False)
        worker_ready.connect(self.on_ready, weak=False)
        worker_shutdown.connect(self.on_shutdown, weak=False)
        after_setup_logger.connect(self.on_logging, weak=False)
        after_setup_task_logger.connect(self.on_logging, weak=False)

    def on_init(self, sender: Any = None, **_: Any) -> None:
        """The worker has imported the app's modules: refuse to start on a broken graph or a
        schema not migrated (a SystemExit, which Celery's signal dispatch does not swallow),
        before the pool forks and before the worker says it is ready."""
        if getattr(sender, "app", None) is not self.app:
            return
        try:
            definitions = self.definitions()
            self.runtime.flow.check(definitions)
            check_queues(self.app, definitions)
            keys = consume_versions(self.app, definitions)
            migrate.check_at_worker_start(self.db)
            self.member = Member(self.runtime.fleet, sender.hostname, definitions, keys)
            _join(self.member)
        except (GraphDefinitionError, SchemaNotMigrated) as exc:
            # Logging is not set up yet at worker_init: the exit's message is the one line.
            raise SystemExit(f"celery-durable: {exc}") from exc
        # Read before the pool forks, so that every child knows.
        self.tasks.events.enabled = bool(getattr(sender, "task_events", False))

    def on_logging(self, logger: logging.Logger | None = None, **_: Any) -> None:
        """Celery has set up the worker's logging (before the pool forks): its handlers get
        the run fields, and JSON lines when log_format says so."""
        if logger is not None:
            logs.configure(json=self.runtime.settings.log_format == "json", loggers=[logger])

    def on_ready(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self.app:
            return
        # Logged now, not at worker_init: the worker's logging is set up by now.
        migrate.tell_where(self.db)
        self.recovery.start(self.member.beat if self.member else None)

    def on_shutdown(self, sender: Any = None, **_: Any) -> None:
        self.recovery.stop()
        if self.member is not None:
            self.member.leave()


def _join(member: Member) -> None:
    """Join the fleet; a database not answering yet only delays the announcement to the
    first heartbeat it answers."""
    try:
        member.join()
    except SQLAlchemyError as exc:
        logger.warning(
            "cannot announce this worker's graph versions yet (%s); it will at its next "
            "heartbeat. Is the schema migrated (durable migrate)?",
            str(exc).splitlines()[0],
        )
