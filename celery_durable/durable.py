"""Durable: binds graphs, the checkpoint store and the recovery sweep to one Celery app."""

from __future__ import annotations

import builtins
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any
from weakref import WeakKeyDictionary

from celery import Celery
from celery.signals import worker_init, worker_ready, worker_shutdown
from pydantic import BaseModel
from sqlalchemy.exc import InterfaceError, OperationalError

from celery_durable.constants import PRUNE_TASK, RECOVERY_TASK
from celery_durable.errors import (
    ConfigurationError,
    ExecutionIdInUse,
    GraphDefinitionError,
    StateTooLarge,
    UnknownGraph,
    UnsafeSerializer,
)
from celery_durable.execution import Execution
from celery_durable.hooks import Hooks
from celery_durable.operations import Operations, task_id
from celery_durable.persistence import codec, migrate
from celery_durable.persistence.database import Database
from celery_durable.persistence.records import utcnow
from celery_durable.persistence.store import CheckpointStore
from celery_durable.persistence.visits import VisitLedger
from celery_durable.retention import PruneReport, prune
from celery_durable.saga.compensation import CompensationRun
from celery_durable.saga.coordinator import Cursor
from celery_durable.saga.recovery import RecoveryLoop, RecoveryReport, sweep
from celery_durable.saga.saga import Saga
from celery_durable.settings import Settings
from celery_durable.status import Status
from celery_durable.tasks.attempt import Attempt, Base
from celery_durable.tasks.events import InlineEvents
from celery_durable.tasks.graph import Graph, Node, OnFailure
from celery_durable.tasks.lease import LeaseKeeper
from celery_durable.tasks.node import NodeRun
from celery_durable.tasks.state import validate

JSON_TYPES = {"json", "application/json"}
HARD_LIMIT_GRACE = 5.0
DB_RETRY_MAX_DELAY = 30.0
logger = logging.getLogger(__name__)
_instances: WeakKeyDictionary[Celery, Durable] = WeakKeyDictionary()


class Durable:
    """Durable execution for one Celery app.

    ``database_url`` falls back to ``CELERY_DURABLE_DATABASE_URL``, then to a SQLite file in
    the working directory. Other settings (see Settings) are keyword arguments or
    ``CELERY_DURABLE_*`` environment variables.
    """

    def __init__(
        self,
        app: Celery,
        database_url: str | None = None,
        *,
        hooks: Hooks | None = None,
        **settings: Any,
    ) -> None:
        require_json(app)
        self.app = app
        self.settings = Settings.load({"database_url": database_url, **settings})
        self.db = Database(self.settings.database_url, pool_size=self.settings.pool_size)
        self.store = CheckpointStore(self.db)
        self.visits = VisitLedger(self.db)
        self.leases = LeaseKeeper(self.visits, self.settings.lease_after, self.settings.lease_ttl)
        self.hooks = hooks or Hooks()
        self.graphs: dict[str, Graph] = {}
        self.operations = Operations(self)
        self._recovery = RecoveryLoop(self)
        self.inline_events = InlineEvents(app)

        # Plain functions, not bound methods: Celery derives a task's call signature from its
        # function and would count a bound method's ``self`` as an argument, so beat's
        # apply_async() would be refused.
        def recover_task() -> dict[str, int]:
            return self.recover().as_dict()

        def prune_task() -> dict[str, int]:
            return self.prune().removed

        app.task(name=RECOVERY_TASK, shared=False, ignore_result=True)(recover_task)
        app.task(name=PRUNE_TASK, shared=False, ignore_result=True)(prune_task)
        # Beat runs both when started for this app; entries the app already has are kept.
        schedule = app.conf.beat_schedule
        schedule.setdefault(RECOVERY_TASK, {"task": RECOVERY_TASK, "schedule": 60.0})
        schedule.setdefault(PRUNE_TASK, {"task": PRUNE_TASK, "schedule": 3600.0})
        _instances[app] = self
        worker_init.connect(self._on_worker_init, weak=False)
        worker_ready.connect(self._on_worker_ready, weak=False)
        worker_shutdown.connect(self._on_worker_shutdown, weak=False)

    @classmethod
    def of(cls, app: Celery) -> Durable:
        """The Durable bound to ``app``: what the CLI uses after ``celery -A proj``."""
        try:
            return _instances[app]
        except KeyError:
            raise ConfigurationError(
                f"Celery app {app.main!r} has no Durable; create Durable(app) in the module you "
                "pass with -A, next to the app."
            ) from None

    # -- definition -------------------------------------------------------------------------

    def graph(self, name: str, state: type[BaseModel], *, on_failure: OnFailure = "fail") -> Graph:
        """A new graph; nodes are added with ``@graph.node``."""
        graph = Graph(self, name, state, on_failure=on_failure)
        self._add(graph)
        return graph

    def saga(self, name: str, state: type[BaseModel]) -> Saga:
        """A new saga; steps are added in order with ``@saga.step``."""
        saga = Saga(self, name, state)
        self._add(saga)
        return saga

    def _add(self, graph: Graph) -> None:
        if graph.name in self.graphs:
            raise GraphDefinitionError(
                f"A graph named {graph.name!r} is already defined on this Durable; graph "
                "names are task name prefixes and must be unique."
            )
        self.graphs[graph.name] = graph

    def register(self, node: Node[..., Any]) -> None:
        """Register the node's Celery task: acks late, requeued if its worker dies, JSON only."""
        body = self._task_body(NodeRun, node)
        body.__name__ = body.__qualname__ = node.name
        body.__doc__ = node.fn.__doc__
        self._register_task(node.task_name, body, node.timeout)

    def register_compensation(self, node: Node[..., Any]) -> None:
        """Register the task that undoes ``node``: same delivery guarantees as a node."""
        body = self._task_body(CompensationRun, node)
        body.__name__ = body.__qualname__ = f"{node.name}_compensate"
        self._register_task(node.compensation_task_name, body, node.timeout)

    def _task_body(
        self, kind: type[NodeRun] | type[CompensationRun], node: Node[..., Any]
    ) -> Callable[..., str]:
        durable = self

        def body(
            task: Any,
            execution_id: str,
            visit: int,
            *,
            version: int,
            state: dict[str, Any],
            cursor: dict[str, Any],
            attempt: int = 1,
            recovered: bool = False,
            status: str = Status.RUNNING,
        ) -> str:
            delivery = task.request.delivery_info or {}
            run: Attempt | None = kind(
                durable,
                node.graph,
                node.name,
                execution_id,
                visit,
                Base(version, state, Cursor.from_json(cursor), Status(status)),
                attempt=attempt,
                # A copy the recovery sweep sent gets the checks of a redelivered one: its
                # visit may have committed, be poison, or be leased by a live attempt.
                redelivered=recovered or bool(delivery.get("redelivered")),
            )
            outcome = "dropped"
            while run is not None:
                try:
                    outcome = durable._run_one(run, task.request)
                except (OperationalError, InterfaceError) as exc:
                    # The database is down: publish this visit again, later. Nothing committed
                    # is lost, and a visit that did commit is replayed, not committed twice.
                    delay = min(2.0**task.request.retries, DB_RETRY_MAX_DELAY)
                    logger.warning(
                        "database unavailable (%s: %s); %s.%s visit %d again in %.0fs",
                        type(exc.orig).__name__,
                        str(exc.orig).strip(),
                        run.graph.name,
                        run.name,
                        run.visit,
                        delay,
                    )
                    if isinstance(run, NodeRun) and run.depth > 0:
                        # Ran inline: the message is the first node's, which did commit.
                        run.redispatch(run.attempt, delay, recovered=True)
                        return "deferred"
                    # The copy gets a redelivered message's checks: the commit may have landed.
                    again = {**task.request.kwargs, "recovered": True}
                    raise task.retry(
                        exc=exc, countdown=delay, max_retries=None, kwargs=again
                    ) from exc
                run = run.successor if isinstance(run, NodeRun) else None
            return outcome

        return body

    def _run_one(self, run: Attempt, request: Any) -> str:
        """Execute one attempt and time it; an inline one also reports itself as task events."""
        inline = isinstance(run, NodeRun) and run.depth > 0
        if inline:
            self.inline_events.started(run, request)
        outcome: str | None = None
        error: BaseException | None = None
        started = time.perf_counter()
        try:
            outcome = run.execute()
        except BaseException as exc:
            error = exc
            raise
        finally:
            took = time.perf_counter() - started
            self.hooks.attempt_finished(run.graph.name, run.name, run.kind, took)
            if inline:
                self.inline_events.finished(run, request, took, outcome, error)
        return outcome

    def _register_task(self, name: str, fn: Any, timeout: float | None) -> None:
        options: dict[str, Any] = {}
        if timeout is not None:
            options = {"soft_time_limit": timeout, "time_limit": timeout + HARD_LIMIT_GRACE}
        self.app.task(
            name=name,
            bind=True,
            shared=False,
            acks_late=True,
            reject_on_worker_lost=True,
            serializer="json",
            ignore_result=True,
            typing=False,
            **options,
        )(fn)

    # -- runs -------------------------------------------------------------------------------

    def start(
        self,
        graph: Graph,
        input: dict[str, Any],
        *,
        execution_id: str | None = None,
        countdown: float | None = None,
        queue: str | None = None,
    ) -> Execution:
        """Validate, store, publish the entry node: in that order, so bad input changes nothing."""
        fingerprint = graph.validate()
        model = validate(graph.name, graph.state, input)
        state = model.model_dump(mode="json")
        state_json = self.state_json(state)
        execution_id = execution_id or uuid.uuid4().hex
        assert graph.entry_node is not None
        cursor = Cursor.start(graph.entry_node, queue)
        record, created = self.store.create_execution(
            execution_id=execution_id,
            graph=graph.name,
            fingerprint=fingerprint,
            state=state,
            cursor=cursor.to_json(),
            state_json=state_json,
        )
        if record.graph != graph.name:
            raise ExecutionIdInUse(execution_id, record.graph, graph.name)
        if created:
            base = Base(0, state, cursor)
            self.dispatch(graph, graph.entry_node, 1, execution_id, base, countdown=countdown)
        return Execution(self, execution_id, record)

    def dispatch(
        self,
        graph: Graph,
        node: str,
        visit: int,
        execution_id: str,
        base: Base,
        *,
        attempt: int = 1,
        countdown: float | None = None,
        compensation: bool = False,
        recovered: bool = False,
    ) -> None:
        """Publish one node visit's message, carrying the committed state and its version."""
        target = graph.nodes[node]
        extra: dict[str, Any] = {"recovered": True} if recovered else {}
        if base.status != Status.RUNNING:
            extra["status"] = str(base.status)
        self.app.send_task(
            target.compensation_task_name if compensation else target.task_name,
            args=(execution_id, visit),
            kwargs={
                "version": base.version,
                "state": base.state,
                "cursor": base.cursor.to_json(),
                "attempt": attempt,
                **extra,
            },
            queue=target.queue or base.cursor.queue,
            countdown=countdown,
            task_id=task_id(execution_id, node, visit, attempt, compensation),
            serializer="json",
            argsrepr=f"({execution_id!r}, visit={visit})",
            kwargsrepr=f"{{version={base.version}, attempt={attempt}}}",
        )

    def destination(self, node: Node[..., Any], run_queue: str | None) -> tuple[str, ...]:
        """Where a node's message goes: the node's queue, else the run's, else what the app's
        ``task_routes`` say for its task name, else the default queue."""
        explicit = node.queue or run_queue
        route = self.app.amqp.router.route({"queue": explicit} if explicit else {}, node.task_name)
        return tuple(
            str(getattr(route.get(key), "name", route.get(key)))
            for key in ("queue", "exchange", "routing_key")
        )

    def unlimited(self, node: Node[..., Any]) -> bool:
        """Whether no time or rate limit applies to the node's task (its ``timeout=``, the
        app's ``task_time_limit``, annotations): only then may it run inline, where a limit
        would cover several nodes or be skipped."""
        task = self.app.tasks[node.task_name]
        conf = self.app.conf
        return not (
            task.time_limit
            or task.soft_time_limit
            or task.rate_limit
            or conf.task_time_limit
            or conf.task_soft_time_limit
        )

    def state_json(self, state: dict[str, Any]) -> str:
        """The state as the store writes it (canonical JSON), refused if over max_state_bytes."""
        text = codec.dumps(state, "The state")
        size = len(text.encode())
        if size > self.settings.max_state_bytes:
            raise StateTooLarge(size, self.settings.max_state_bytes)
        return text

    def get(self, execution_id: str) -> Execution:
        """The handle of an existing execution (raises ExecutionNotFound)."""
        return Execution(self, execution_id, self.store.get_execution(execution_id))

    def list(
        self,
        status: Status | str | Iterable[Status | str] | None = None,
        graph: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[Execution]:
        """Executions, newest first."""
        records = self.store.list_executions(status=status, graph=graph, since=since, limit=limit)
        return [Execution(self, r.id, r) for r in records]

    def graph_of(self, name: str) -> Graph:
        try:
            return self.graphs[name]
        except KeyError:
            raise UnknownGraph(name, sorted(self.graphs)) from None

    # -- operations -------------------------------------------------------------------------

    def migrate(self) -> tuple[str | None, str]:
        """Create or upgrade the schema; a no-op when it is current."""
        return migrate.upgrade(self.db)

    def recover(self) -> RecoveryReport:
        """One recovery sweep now (workers also sweep on start and periodically)."""
        return sweep(self)

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
        return prune(
            self, older_than, succeeded=succeeded, failed=failed, batch=batch, dry_run=dry_run
        )

    def stuck(self, threshold: timedelta | None = None) -> builtins.list[Execution]:
        """Running executions with no commit for ``threshold`` (default: stuck_after)."""
        age = threshold or timedelta(seconds=self.settings.stuck_after)
        records = self.store.list_stale(utcnow() - age, limit=1000, include_swept=True)
        return [Execution(self, r.id, r) for r in records]

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        """The worker has imported the app's modules: refuse to start on a broken graph (a
        SystemExit, which Celery's signal dispatch does not swallow), before the pool forks."""
        if getattr(sender, "app", None) is not self.app:
            return
        for graph in self.graphs.values():
            try:
                graph.validate()
            except GraphDefinitionError as exc:
                logger.critical("%s", exc)
                raise SystemExit(f"celery-durable: {exc}") from exc
        # Read before the pool forks, so that every child knows.
        self.inline_events.enabled = bool(getattr(sender, "task_events", False))

    def _on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is self.app:
            self._recovery.start()

    def _on_worker_shutdown(self, sender: Any = None, **_: Any) -> None:
        self._recovery.stop()


def require_json(app: Celery) -> None:
    """Refuse an app that would send or accept anything but JSON, then pin JSON."""
    conf = app.conf
    for setting in ("task_serializer", "result_serializer"):
        value = conf.get(setting)
        if value not in (None, *JSON_TYPES):
            raise UnsafeSerializer(setting, value)
    for setting in ("accept_content", "result_accept_content"):
        value = conf.get(setting)
        if value is not None and set(value) - JSON_TYPES:
            raise UnsafeSerializer(setting, list(value))
    conf.task_serializer = "json"
    conf.result_serializer = "json"
    conf.accept_content = ["json"]
