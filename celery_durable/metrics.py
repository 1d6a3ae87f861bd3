"""Prometheus metrics for durable executions, right under Celery's prefork pool.

Two sources, because a pool child's counters and the database's truth need different plumbing:

* **In-process events** (``PrometheusHooks``, wired by ``instrument(durable)``): counters and
  histograms updated by the process that saw the event, usually a pool child. With
  ``PROMETHEUS_MULTIPROC_DIR`` set, prometheus_client writes them to per-process files in that
  directory and the metrics server sums every process's files (prometheus_client's multiprocess
  mode); without it they live in this process's default registry.
* **Database gauges** (``DatabaseCollector``): read from the executions table at scrape time,
  so they are exact whatever the pool, the number of workers or their restarts.

``serve_metrics(durable, port)`` starts an HTTP server exposing both (``/metrics``);
``run_metrics(durable, port)`` does the same and blocks: what ``celery durable metrics`` runs.

In-process metrics (``instrument(durable)``)
--------------------------------------------
``celery_durable_node_commits_total{graph,node}``
    Node visits committed (one per node visit: replays and refused duplicates do not count).
``celery_durable_node_retries_total{graph,node,error}``
    Failed node attempts that will run again; ``error`` is the exception's class name.
``celery_durable_compensations_total{graph,step}``
    Compensation steps committed (a saga's completed step undone).
``celery_durable_executions_finished_total{graph,status}``
    Executions that reached a final status (succeeded, failed, compensated, cancelled).
``celery_durable_interventions_total{graph,step}``
    Compensations that failed for good, leaving their execution ``needs_intervention``.
``celery_durable_recoveries_total{reason}``
    Node messages the recovery sweep published again (``due``: a retry whose time came;
    ``stale``: a running execution with no commit and nothing in flight).
``celery_durable_node_duration_seconds{graph,node,kind}`` (histogram)
    Wall time of node and compensation attempts (``kind``: node|compensation): the function,
    its commit and the hand-on (a publish, or nothing when the next node runs inline).
    Filled by the ``Hooks.attempt_finished`` hook.
``celery_durable_checkpoint_write_seconds{graph,kind}`` (histogram)
    Time of the checkpoint commit itself (one transaction). Filled by the
    ``Hooks.checkpoint_written`` hook when the engine calls it.

Database metrics (read at scrape time by ``DatabaseCollector``)
---------------------------------------------------------------
``celery_durable_executions{graph,status}``
    Executions stored, by graph and status; every status is reported for every graph, 0
    included, so alerts and dashboards have stable series.
``celery_durable_needs_intervention{graph}``
    Executions waiting for an operator (a compensation failed for good). Alert on ``> 0``.
``celery_durable_stuck_executions{graph}``
    Running or compensating executions with no commit for longer than the threshold
    (``stuck_after`` setting, default 1800 s).
``celery_durable_longest_idle_seconds{graph}``
    Seconds since the least recently committed running or compensating execution last
    committed (0 when none is active).
``celery_durable_stuck_threshold_seconds``
    The threshold the stuck gauge uses.
``celery_durable_database_up``
    1 when the last scrape could read the database, else 0 (the other database metrics are
    then absent from that scrape).
``celery_durable_scrape_duration_seconds``
    Time the database queries of this scrape took.

Prefork and several hosts
-------------------------
Set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory, the same for the worker and for the
metrics server, before either starts. Containers that share a volume must not share a
directory (process ids repeat across containers): give each its own subdirectory of the volume
and point the server at the volume's root with ``CELERY_DURABLE_METRICS_DIR`` (or
``multiprocess_dir=``): the server sums ``*.db`` files in that directory and in its immediate
subdirectories. The Docker image's entrypoint does exactly that.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from types import FrameType
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from celery_durable.hooks import Hooks
from celery_durable.persistence.records import Commit, Kind, utcnow
from celery_durable.status import Status

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from celery_durable.durable import Durable

PREFIX = "celery_durable"
METRICS_DIR_ENV = "CELERY_DURABLE_METRICS_DIR"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_PORT = 9808
NODE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

logger = logging.getLogger(__name__)


# -- in-process events --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Instruments:
    commits: Counter
    retries: Counter
    compensations: Counter
    finished: Counter
    interventions: Counter
    recoveries: Counter
    node_duration: Histogram
    checkpoint_write: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> _Instruments:
        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, labels, registry=registry)

        return cls(
            commits=counter("node_commits", "Node visits committed.", ("graph", "node")),
            retries=counter(
                "node_retries",
                "Failed node attempts that will run again.",
                ("graph", "node", "error"),
            ),
            compensations=counter(
                "compensations", "Compensation steps committed.", ("graph", "step")
            ),
            finished=counter(
                "executions_finished",
                "Executions that reached a final status.",
                ("graph", "status"),
            ),
            interventions=counter(
                "interventions",
                "Compensations that failed for good (execution needs_intervention).",
                ("graph", "step"),
            ),
            recoveries=counter(
                "recoveries", "Node messages the recovery sweep published again.", ("reason",)
            ),
            node_duration=Histogram(
                f"{PREFIX}_node_duration_seconds",
                "Wall time of node and compensation tasks.",
                ("graph", "node", "kind"),
                buckets=NODE_BUCKETS,
                registry=registry,
            ),
            checkpoint_write=Histogram(
                f"{PREFIX}_checkpoint_write_seconds",
                "Time of one checkpoint commit (one transaction).",
                ("graph", "kind"),
                buckets=WRITE_BUCKETS,
                registry=registry,
            ),
        )


# Metric objects are per registry and created once: a registry refuses a name twice.
_instruments: weakref.WeakKeyDictionary[CollectorRegistry, _Instruments] = (
    weakref.WeakKeyDictionary()
)
_instruments_lock = threading.Lock()


def _instruments_for(registry: CollectorRegistry) -> _Instruments:
    with _instruments_lock:
        found = _instruments.get(registry)
        if found is None:
            found = _instruments[registry] = _Instruments.create(registry)
        return found


class PrometheusHooks(Hooks):
    """Hooks that count what the engine reports; ``inner`` hooks get every event after them.

    Metrics are registered in ``registry`` (the process-wide default unless given). Prefer
    ``instrument(durable)``, which installs them, keeping the Durable's hooks as ``inner``.
    """

    def __init__(
        self, registry: CollectorRegistry = REGISTRY, *, inner: Hooks | None = None
    ) -> None:
        self.registry = registry
        self.inner = inner
        self.m = _instruments_for(registry)

    def node_committed(self, graph: str, node: str, commit: Commit) -> None:
        if commit.kind == Kind.COMPENSATION:
            self.m.compensations.labels(graph, commit.node).inc()
        else:
            self.m.commits.labels(graph, commit.node).inc()

    def node_retrying(self, graph: str, node: str, error: BaseException, delay: float) -> None:
        self.m.retries.labels(graph, node, type(error).__name__).inc()

    def execution_finished(self, execution_id: str, graph: str, status: Status) -> None:
        self.m.finished.labels(graph, str(status)).inc()

    def intervention_required(self, execution_id: str, graph: str, step: str) -> None:
        self.m.interventions.labels(graph, step).inc()

    def recovered(self, execution_id: str, node: str, reason: str) -> None:
        self.m.recoveries.labels(reason).inc()

    def attempt_finished(self, graph: str, node: str, kind: str, seconds: float) -> None:
        self.m.node_duration.labels(graph, node, kind).observe(seconds)

    def checkpoint_written(self, graph: str, node: str, kind: str, seconds: float) -> None:
        self.m.checkpoint_write.labels(graph, kind).observe(seconds)


def instrument(durable: Durable, registry: CollectorRegistry = REGISTRY) -> PrometheusHooks:
    """Count ``durable``'s events and time its node attempts; returns the hooks installed.

    Call it where the Celery app is built (the module ``celery -A`` imports), so that the
    worker's pool children inherit it. Hooks already set on ``durable`` keep being called.
    """
    if isinstance(durable.hooks, PrometheusHooks):
        return durable.hooks
    hooks = PrometheusHooks(registry, inner=durable.hooks)
    durable.hooks = hooks
    return hooks


# -- the database, at scrape time ---------------------------------------------------------------


class DatabaseCollector(Collector):
    """Gauges read from the executions table at each scrape: right whatever the pool."""

    def __init__(self, durable: Durable, stuck_after: float | None = None) -> None:
        self.durable = durable
        self.stuck_after = stuck_after if stuck_after is not None else _stuck_after(durable)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            f"{PREFIX}_database_up", "1 if this scrape could read the executions table."
        )
        t0 = time.perf_counter()
        try:
            metrics = self._read()
        except Exception as exc:
            # One line per scrape, not a traceback: an outage is scraped every few seconds.
            first = str(exc).splitlines()[0] if str(exc) else ""
            logger.warning("celery-durable metrics: cannot read the database: %s", first)
            logger.debug("database error", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics
        took = GaugeMetricFamily(
            f"{PREFIX}_scrape_duration_seconds", "Time the database queries of this scrape took."
        )
        took.add_metric([], time.perf_counter() - t0)
        yield took

    def _read(self) -> list[Metric]:
        now = utcnow()
        gauges = self.durable.store.execution_gauges(now - timedelta(seconds=self.stuck_after))
        graphs = sorted({g for g, _ in gauges.counts} | set(self.durable.graphs))
        total = GaugeMetricFamily(
            f"{PREFIX}_executions",
            "Executions stored, by graph and status.",
            labels=["graph", "status"],
        )
        needs = GaugeMetricFamily(
            f"{PREFIX}_needs_intervention",
            "Executions waiting for an operator (a compensation failed for good).",
            labels=["graph"],
        )
        stuck = GaugeMetricFamily(
            f"{PREFIX}_stuck_executions",
            "Running or compensating executions with no commit for longer than the threshold.",
            labels=["graph"],
        )
        longest = GaugeMetricFamily(
            f"{PREFIX}_longest_idle_seconds",
            "Seconds since the least recently committed active execution last committed.",
            labels=["graph"],
        )
        for graph in graphs:
            for status in Status:
                total.add_metric([graph, str(status)], gauges.counts.get((graph, status), 0))
            needs.add_metric([graph], gauges.counts.get((graph, Status.NEEDS_INTERVENTION), 0))
            active = gauges.active.get(graph)
            stuck.add_metric([graph], active.stuck if active else 0)
            idle = (now - active.oldest_update).total_seconds() if active else 0.0
            longest.add_metric([graph], max(idle, 0.0))
        threshold = GaugeMetricFamily(
            f"{PREFIX}_stuck_threshold_seconds", "The no-commit age that counts as stuck."
        )
        threshold.add_metric([], self.stuck_after)
        return [total, needs, stuck, longest, threshold]


def _stuck_after(durable: Durable) -> float:
    return float(getattr(durable.settings, "stuck_after", 1800.0))


class MultiProcessDirCollector(Collector):
    """prometheus_client's multiprocess files, summed over ``path`` and its subdirectories
    (one per container sharing the volume, so process ids never collide)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def files(self) -> list[str]:
        return sorted(
            glob.glob(os.path.join(self.path, "*.db"))
            + glob.glob(os.path.join(self.path, "*", "*.db"))
        )

    def collect(self) -> Iterable[Metric]:
        merged: Iterable[Metric] = MultiProcessCollector.merge(self.files(), accumulate=True)  # type: ignore[no-untyped-call]
        return merged


def multiprocess_dir(explicit: str | None = None) -> str | None:
    """Where the in-process metrics' files are: argument, CELERY_DURABLE_METRICS_DIR,
    then PROMETHEUS_MULTIPROC_DIR; None when not in multiprocess mode."""
    path = explicit or os.environ.get(METRICS_DIR_ENV) or os.environ.get(MULTIPROC_ENV)
    return path or None


class _Delegate(Collector):
    """Another registry's metrics, inside this one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


def metrics_registry(
    durable: Durable,
    *,
    stuck_after: float | None = None,
    multiprocess: str | None = None,
    in_process: CollectorRegistry | None = REGISTRY,
) -> CollectorRegistry:
    """What the metrics server exposes: the database gauges, plus the in-process metrics,
    summed from the multiprocess files when configured, else ``in_process`` (this process's
    own; None to leave them out)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(durable, stuck_after))
    path = multiprocess_dir(multiprocess)
    if path is not None:
        os.makedirs(path, exist_ok=True)
        registry.register(MultiProcessDirCollector(path))
    elif in_process is not None:
        registry.register(_Delegate(in_process))
    return registry


@dataclass
class MetricsServer:
    """A running metrics endpoint; ``port`` is the bound one (ask for 0 to get a free one)."""

    server: WSGIServer
    thread: threading.Thread
    registry: CollectorRegistry
    addr: str = field(default="0.0.0.0")

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.addr in ("0.0.0.0", "", "::") else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(
    durable: Durable,
    port: int = DEFAULT_PORT,
    addr: str = "0.0.0.0",
    *,
    stuck_after: float | None = None,
    multiprocess: str | None = None,
    in_process: CollectorRegistry | None = REGISTRY,
) -> MetricsServer:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread; returns at once."""
    registry = metrics_registry(
        durable, stuck_after=stuck_after, multiprocess=multiprocess, in_process=in_process
    )
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(server, thread, registry, addr)


def run_metrics(
    durable: Durable,
    port: int = DEFAULT_PORT,
    addr: str = "0.0.0.0",
    *,
    stuck_after: float | None = None,
    multiprocess: str | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve metrics until interrupted (Ctrl-C, SIGTERM) or until ``stop`` is set."""
    running = serve_metrics(durable, port, addr, stuck_after=stuck_after, multiprocess=multiprocess)
    stop = stop or threading.Event()
    logger.info("celery-durable metrics on %s", running.url)

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(1.0):
                pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        running.close()
