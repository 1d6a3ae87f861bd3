"""Durable: the composition root. It builds the runtime every part shares, keeps the graphs
and sagas defined on one Celery app, starts and finds runs, and wires worker signals.
Nothing under it imports it: each part gets what it uses, explicitly."""

from __future__ import annotations

import builtins
import logging
from collections.abc import Collection, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar, Unpack
from weakref import WeakKeyDictionary

from celery import Celery
from pydantic import BaseModel

from celery_durable.engine import bulk, stream
from celery_durable.engine.bulk import BulkReport
from celery_durable.engine.execution import Execution
from celery_durable.engine.fleet import Fleet
from celery_durable.engine.flow_control import FlowControl
from celery_durable.engine.leases import LeaseKeeper
from celery_durable.engine.runtime import Runtime
from celery_durable.engine.start import StartKeywords, StartOptions, start_run
from celery_durable.engine.wakeups import send_event
from celery_durable.errors import (
    ConfigurationError,
    DuplicateVersion,
)
from celery_durable.graphs.builder import Definitions, Graph, Node, OnFailure, Saga
from celery_durable.hooks import Hooks
from celery_durable.lifecycle import Lifecycle
from celery_durable.maintenance import Maintenance
from celery_durable.model.records import (
    Checkpoint,
    EventRecord,
    Kind,
    utcnow,
)
from celery_durable.model.tags import checked
from celery_durable.persistence.codec import Signer
from celery_durable.persistence.database import Database
from celery_durable.persistence.deployments import Deployment, Deployments
from celery_durable.persistence.event_log import EventLog
from celery_durable.persistence.flow_rows import FlowStore
from celery_durable.persistence.gauges import ExecutionGauges
from celery_durable.persistence.migrate import uses_database
from celery_durable.persistence.sealing import Sealer
from celery_durable.persistence.slot_table import SlotTable
from celery_durable.persistence.store import CheckpointStore
from celery_durable.persistence.stream_rows import Emitted
from celery_durable.persistence.visits import VisitLedger
from celery_durable.policies.limits import Limit
from celery_durable.relay import Relay
from celery_durable.scheduling import Scheduling
from celery_durable.settings import Settings
from celery_durable.status import Status
from celery_durable.tasks import consumer, message
from celery_durable.tasks.dispatch import CeleryDispatcher
from celery_durable.tasks.forwarding import unregistered
from celery_durable.tasks.registry import (
    NodeTasks,
    keep_consuming_after_channel_errors,
    require_json,
)
from celery_durable.worker_lifecycle import WorkerLifecycle

G = TypeVar("G", bound=Graph)
logger = logging.getLogger(__name__)


_instances: WeakKeyDictionary[Celery, Durable] = WeakKeyDictionary()


class Durable(Maintenance, Lifecycle, Scheduling):
    """Durable execution for one Celery app.

    ``database_url`` falls back to ``CELERY_DURABLE_DATABASE_URL``, then to a SQLite file in
    the working directory. Other settings (see Settings) are keyword arguments or
    ``CELERY_DURABLE_*`` environment variables.

    Nothing connects until first used. The first use checks the schema, once per process: on
    SQLite, the first run started or a worker starting creates it, and a read never creates
    the file; on PostgreSQL, ``celery -A proj durable migrate`` (or ``migrate()``) creates it,
    and until then a client raises, and a worker stops with, SchemaNotMigrated.
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
        keep_consuming_after_channel_errors(app)
        self.app = app
        self.settings = Settings.load({"database_url": database_url, **settings})
        self.db = Database.of(self.settings)
        sealer = Sealer(
            self.settings.compress_over,
            self.settings.encryption_keys,
            self.settings.encryption_key,
            Signer(
                self.settings.checksum_keys,
                self.settings.checksum_key,
                accept_unkeyed=self.settings.accept_unkeyed_checksums,
            ),
        )
        self.store = CheckpointStore(self.db, sealer)
        self.visits = VisitLedger(self.db)
        # By name, the newest version (what new runs start on); every version in versions.
        self.graphs: dict[str, Graph] = {}
        self.versions: dict[str, builtins.list[Graph]] = {}
        definitions = Definitions(self.versions)
        # The engine calls this relay; what users set as ``hooks`` is chained behind it.
        self._hooks = Relay(self)
        self._hooks.inner = hooks or Hooks()
        self.runtime = Runtime(
            store=self.store,
            visits=self.visits,
            events=EventLog(self.db),
            leases=LeaseKeeper(self.visits, self.settings.lease_after, self.settings.lease_ttl),
            dispatcher=CeleryDispatcher(app, definitions, sealer),
            hooks=self._hooks,
            settings=self.settings,
            graphs=definitions,
            flow=FlowControl(
                FlowStore(self.db), SlotTable(self.db), probe_ttl=self.settings.lease_ttl
            ),
            announcer=self._hooks,
            fleet=Fleet(Deployments(self.db), self.settings.heartbeat),
        )
        self._tasks = NodeTasks(app, self.runtime)
        consumer.install(app, unregistered(app, self.runtime))
        self._tasks.register_maintenance(
            lambda: self.recover().as_dict(), lambda: self.prune().removed
        )
        _instances[app] = self
        self._worker = WorkerLifecycle(
            app,
            self.runtime,
            self.db,
            self._tasks,
            lambda: [g.definition() for versions in self.versions.values() for g in versions],
        )

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

    @property
    def hooks(self) -> Hooks:
        """The hooks the engine calls (``metrics.instrument()`` chains its own in front)."""
        assert self._hooks.inner is not None
        return self._hooks.inner

    @hooks.setter
    def hooks(self, hooks: Hooks) -> None:
        self._hooks.inner = hooks

    # -- definition -------------------------------------------------------------------------

    def graph(
        self,
        name: str,
        state: type[BaseModel],
        *,
        on_failure: OnFailure = "fail",
        concurrency: Limit | None = None,
        version: str | None = None,
        keep_checkpoints: int | None = None,
    ) -> Graph:
        """A new graph; nodes are added with ``@graph.node``. ``concurrency`` bounds its
        running executions per key.

        ``version``: what runs started on it are pinned to (default: its structure's
        fingerprint). Versions of one name live side by side, sharing node task names; the
        one defined last starts new runs, the others finish the runs pinned to them.

        ``keep_checkpoints``: each run keeps its newest this many checkpoints (and its audit
        trail), deleting older ones as it goes: for runs that loop (engine/compaction.py)."""
        return self._add(
            Graph(
                self,
                name,
                state,
                on_failure=on_failure,
                concurrency=concurrency,
                version=version,
                keep_checkpoints=keep_checkpoints,
            )
        )

    def saga(
        self,
        name: str,
        state: type[BaseModel],
        *,
        concurrency: Limit | None = None,
        version: str | None = None,
        keep_checkpoints: int | None = None,
    ) -> Saga:
        """A new saga; steps are added in order with ``@saga.step``. ``version`` and
        ``keep_checkpoints`` as for ``graph``."""
        return self._add(Saga(self, name, state, concurrency, version, keep_checkpoints))

    def _add(self, graph: G) -> G:
        versions = self.versions.setdefault(graph.name, [])
        declared = graph.declared_version
        if declared is not None and any(v.declared_version == declared for v in versions):
            raise DuplicateVersion(graph.name, declared)
        versions.append(graph)
        self.graphs[graph.name] = graph
        return graph

    def graph_at(self, name: str, version: str | None) -> Graph | None:
        """The graph ``name`` at ``version`` as defined here (version None: the newest), or
        None when this process does not define it."""
        versions = self.versions.get(name, [])
        if version is None:
            return versions[-1] if versions else None
        return next((g for g in versions if g.version == version), None)

    def register(self, node: Node[..., Any]) -> None:
        """Register the node's Celery task: acks late, requeued if its worker dies, JSON only."""
        self._tasks.register(node)

    def register_compensation(self, node: Node[..., Any]) -> None:
        """Register the task that undoes ``node``: same delivery guarantees as a node."""
        self._tasks.register_compensation(node)

    # -- runs -------------------------------------------------------------------------------

    @uses_database(creates=True)
    def start(
        self, graph: Graph | str, input: dict[str, Any], **options: Unpack[StartKeywords]
    ) -> Execution:
        """Validate, store, publish the entry node: in that order, so bad input changes
        nothing. ``graph``: a graph, or a name (its newest version). ``options``:
        ``execution_id``, ``countdown``, ``queue``, ``priority``, ``tags``."""
        definition = self.runtime.graph(graph) if isinstance(graph, str) else graph.definition()
        self.runtime.flow.check([definition])
        record = start_run(self.runtime, definition, input, StartOptions(**options))
        return Execution(self.runtime, record.id, record)

    @uses_database()
    def get(self, execution_id: str) -> Execution:
        """The handle of an existing execution (raises ExecutionNotFound)."""
        return Execution(self.runtime, execution_id, self.store.get_execution(execution_id))

    @uses_database()
    def stream(
        self,
        graph: str | Collection[str] | None = None,
        *,
        status: Status | str | Iterable[Status | str] | None = None,
        timeout: float | None = None,
    ) -> Iterator[Checkpoint | Emitted]:
        """The checkpoints and emitted values (``ctx.emit``) of the runs of ``graph`` (None:
        every graph) in ``status`` now (default: any but finished) and of every run started
        from now on, as they commit, each run to its end; returns after ``timeout`` s."""
        return stream.stream_runs(self.runtime, graph, status, timeout)

    @uses_database()
    def list(
        self,
        status: Status | str | Iterable[Status | str] | None = None,
        graph: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        *,
        parent: str | None = None,
        id_prefix: str | None = None,
        before: tuple[datetime, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> builtins.list[Execution]:
        """Executions, newest first; ``parent``: only the children of that run; ``id_prefix``:
        only ids that start with it; ``tags``: only runs that carry every one of these pairs
        (read off an index, fast at millions of runs). Each run's own tags come with it.

        Paging is by key, not offset: ``before`` is ``(run.record.created_at, run.id)`` of the
        last run of the page before, and the page goes on from there, so runs started while
        an operator pages through do not shift or repeat what the next page shows.
        """
        listed = self.store.list_with_tags(
            status=status,
            graph=graph,
            since=since,
            parent=parent,
            id_prefix=id_prefix,
            before=before,
            limit=limit,
            tags=None if tags is None else checked(tags),
        )
        return [Execution(self.runtime, r.id, r, found) for r, found in listed]

    @uses_database()
    def bulk(
        self,
        operation: str,
        *,
        ids: Iterable[str] | None = None,
        status: Status | str | Iterable[Status | str] | None = None,
        graph: str | None = None,
        since: datetime | None = None,
        by: str | None = None,
        reason: str | None = None,
        dry_run: bool = False,
        tags: Mapping[str, str] | None = None,
    ) -> BulkReport:
        """``operation`` (pause, resume, cancel, retry, compensate, upgrade, delete) on every
        run of a selection: the ``ids`` given, or those that match ``status``, ``graph``,
        ``since`` and ``tags`` (at least one filter). Each run is its own audited commit; the
        report says what was done and what was refused (an id with no run too), and why.
        ``dry_run`` changes nothing."""
        runs = bulk.selection(
            self.runtime, ids=ids, status=status, graph=graph, since=since, tags=tags
        )
        return bulk.apply(operation, runs, by=by, reason=reason, dry_run=dry_run)

    @uses_database()
    def status_counts(self) -> dict[str, int]:
        """How many executions there are in each status; a status with none is left out."""
        return self.store.count_by_status()

    @uses_database()
    def stuck(self, threshold: timedelta | None = None) -> builtins.list[Execution]:
        """Running executions with no commit for ``threshold`` (default: stuck_after)."""
        age = threshold or timedelta(seconds=self.settings.stuck_after)
        records = self.store.list_stale(utcnow() - age, limit=1000, include_swept=True)
        return [Execution(self.runtime, r.id, r) for r in records]

    @uses_database()
    def execution_gauges(self, stuck_before: datetime) -> ExecutionGauges:
        """What the metrics server shows, read in a few grouped queries: executions by graph
        and status, the active runs of each graph (those idle since ``stuck_before`` counted),
        waiting runs by what they wait for."""
        return self.store.execution_gauges(stuck_before)

    @uses_database()
    def deployments(self) -> builtins.list[Deployment]:
        """What the live workers serve: a row per (worker, graph, version), with that
        version's structure and the routing keys the worker consumes."""
        return self.runtime.fleet.live()

    @uses_database()
    def runs_by_version(self) -> dict[tuple[str, str | None, Status], int]:
        """Executions by (graph, version, status): what tells an old version drained. Version
        None: runs started before runs were pinned to versions."""
        return self.runtime.fleet.rows.runs_by_version()

    def task_id(self, checkpoint: Checkpoint) -> str | None:
        """The Celery task id of the attempt that committed ``checkpoint``, to find it in
        Flower or a result backend; None for a checkpoint no node or compensation task wrote
        (a start, a manual change, a step)."""
        attempt = (checkpoint.meta or {}).get("attempt")
        if checkpoint.kind not in (Kind.NODE, Kind.COMPENSATION) or attempt is None:
            return None
        cp, undo = checkpoint, checkpoint.kind == Kind.COMPENSATION
        return message.task_id(cp.execution_id, cp.node, cp.visit, attempt, compensation=undo)

    @uses_database()
    def send_event(
        self,
        execution_id: str,
        name: str,
        payload: Any = None,
        idempotency_key: str | None = None,
        *,
        by: str | None = None,
        reason: str | None = None,
    ) -> EventRecord:
        """Send an event to a run without loading its handle (see Execution.send_event)."""
        return send_event(
            self.runtime, execution_id, name, payload, idempotency_key, by=by, reason=reason
        )
