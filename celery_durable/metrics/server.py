"""The metrics server: gauges read from the database at each scrape, plus the workers'
in-process metrics, summed from their multiprocess files when configured."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import FrameType
from typing import TYPE_CHECKING, TypedDict, Unpack

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from celery_durable.hooks import Hooks
from celery_durable.metrics.instruments import MULTIPROC_ENV, PREFIX, PrometheusHooks
from celery_durable.model.records import BreakerState, utcnow
from celery_durable.status import Status

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from celery_durable.durable import Durable

METRICS_DIR_ENV = "CELERY_DURABLE_METRICS_DIR"
DEFAULT_PORT = 9808
DEFAULT_ADDR = "127.0.0.1"
NEEDS_HELP = (
    "Executions stopped until an operator acts (status needs_intervention): a compensation, "
    "or a node of a graph with on_failure='intervene', failed for good; a deploy left a "
    "state that no longer fits the model or a node or version no worker has; or a row failed "
    "its checksum. `durable show ID` says which; retry, skip or restart it."
)

logger = logging.getLogger(__name__)


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
        gauges = self.durable.execution_gauges(now - timedelta(seconds=self.stuck_after))
        graphs = sorted({g for g, _ in gauges.counts} | set(self.durable.graphs))
        total = GaugeMetricFamily(
            f"{PREFIX}_executions",
            "Executions stored, by graph and status.",
            labels=["graph", "status"],
        )
        needs = GaugeMetricFamily(f"{PREFIX}_needs_intervention", NEEDS_HELP, labels=["graph"])
        stuck = GaugeMetricFamily(
            f"{PREFIX}_stuck_executions",
            "Running or compensating executions with no commit for longer than the threshold.",
            labels=["graph"],
        )
        waiting = GaugeMetricFamily(
            f"{PREFIX}_waiting",
            "Waiting executions, by what they wait for first: sleep, event or interrupt.",
            labels=["graph", "kind"],
        )
        for (graph, kind), count in sorted(gauges.waiting.items()):
            waiting.add_metric([graph, kind], count)
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
        by_version = self._by_version(gauges.by_version)
        return [total, by_version, needs, stuck, longest, waiting, threshold, *self._breakers()]

    def _by_version(self, counts: Mapping[tuple[str, str | None, Status], int]) -> Metric:
        """Every status of every version stored or defined here, zeros included: an old
        version reads as drained when its active statuses fall to 0."""
        by_version = GaugeMetricFamily(
            f"{PREFIX}_executions_by_version",
            "Executions stored, by graph, the graph version they are pinned to (empty: started "
            "before runs were pinned) and status.",
            labels=["graph", "version", "status"],
        )
        defined = {(name, g.version) for name, gs in self.durable.versions.items() for g in gs}
        for graph, version in sorted({(g, v or "") for g, v, _ in counts} | defined):
            for status in Status:
                n = counts.get((graph, version or None, status), 0)
                by_version.add_metric([graph, version, str(status)], n)
        return by_version

    def _breakers(self) -> list[Metric]:
        state = GaugeMetricFamily(
            f"{PREFIX}_breaker_state",
            "Each circuit breaker's state: 0 closed, 1 half-open, 2 open.",
            labels=["breaker"],
        )
        rejections = CounterMetricFamily(
            f"{PREFIX}_breaker_rejections",
            "Calls a circuit breaker held back or failed fast, over the fleet.",
            labels=["breaker"],
        )
        for b in self.durable.breakers():
            state.add_metric([b.name], BREAKER_LEVELS[b.row.state])
            rejections.add_metric([b.name], b.rejections)
        return [state, rejections]


BREAKER_LEVELS = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


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


def worker_metrics_missing(hooks: Hooks | None, explicit: str | None = None) -> list[str]:
    """What keeps the workers' counters from a metrics server reading ``explicit`` (or the
    environment's directory), each with what to set; empty when nothing does. ``hooks``:
    those of the app's Durable, as its workers load it (None: no app to look at)."""
    missing = []
    if hooks is not None and not isinstance(hooks, PrometheusHooks):
        missing.append(
            "the app module does not call celery_durable.metrics.instrument(durable), so its "
            "workers count no node commits, retries or durations; only the database gauges "
            "are served. Call it next to Durable(app)."
        )
    path = multiprocess_dir(explicit)
    if path is None:
        missing.append(
            f"no multiprocess directory: the workers' counters stay in their own processes, "
            f"where this server cannot read them. Set {MULTIPROC_ENV} to the same empty "
            "directory for the workers and this server before they start (here, "
            f"{METRICS_DIR_ENV} or --multiprocess-dir may point at the parent of the "
            "workers' directories)."
        )
    elif not MultiProcessDirCollector(path).files():
        missing.append(
            f"no worker has written metrics to {path} yet: a worker writes there once it "
            f"counts something, if its app module calls instrument(durable) and it started "
            f"with {MULTIPROC_ENV} set to this directory (or one under it)."
        )
    return missing


class _Delegate(Collector):
    """Another registry's metrics, inside this one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


class MetricsSources(TypedDict, total=False):
    """What a metrics endpoint reads, each optional: ``stuck_after``, the seconds without a
    commit that count as stuck (default: the setting); ``multiprocess``, the directory of the
    workers' multiprocess files (default: see multiprocess_dir); ``in_process``, the registry
    exposed when there are no such files (default: this process's own; None: none)."""

    stuck_after: float | None
    multiprocess: str | None
    in_process: CollectorRegistry | None


def metrics_registry(durable: Durable, **sources: Unpack[MetricsSources]) -> CollectorRegistry:
    """What the metrics server exposes: the database gauges, plus the in-process metrics,
    summed from the multiprocess files when configured, else ``in_process``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(durable, sources.get("stuck_after")))
    path = multiprocess_dir(sources.get("multiprocess"))
    in_process = sources.get("in_process", REGISTRY)
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
    addr: str = field(default=DEFAULT_ADDR)

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
    addr: str = DEFAULT_ADDR,
    **sources: Unpack[MetricsSources],
) -> MetricsServer:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread; returns at once."""
    registry = metrics_registry(durable, **sources)
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(server, thread, registry, addr)


def run_metrics(
    durable: Durable,
    port: int = DEFAULT_PORT,
    addr: str = DEFAULT_ADDR,
    *,
    stop: threading.Event | None = None,
    **sources: Unpack[MetricsSources],
) -> None:
    """Serve metrics until interrupted (Ctrl-C, SIGTERM) or until ``stop`` is set."""
    running = serve_metrics(durable, port, addr, **sources)
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
