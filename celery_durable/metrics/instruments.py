"""In-process metrics: hooks that count what the engine reports, in the process that saw it
(with PROMETHEUS_MULTIPROC_DIR, in per-process files the metrics server sums)."""

from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery.signals import worker_init
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, values

from celery_durable.hooks import Hooks
from celery_durable.model.records import Commit, Kind
from celery_durable.status import Status

if TYPE_CHECKING:
    from celery_durable.durable import Durable

PREFIX = "celery_durable"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
NODE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
WAKE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)
RECOVERY_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800)
WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

logger = logging.getLogger(__name__)


# -- in-process events --------------------------------------------------------------------------


# What each instrument counts: field -> (name under PREFIX, help, labels[, histogram buckets]).
COUNTERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "commits": ("node_commits", "Node visits committed.", ("graph", "node")),
    "retries": (
        "node_retries",
        "Failed node attempts that will run again.",
        ("graph", "node", "error"),
    ),
    "compensations": ("compensations", "Compensation steps committed.", ("graph", "step")),
    "finished": (
        "executions_finished",
        "Executions that reached a final status.",
        ("graph", "status"),
    ),
    "interventions": (
        "interventions",
        "Runs stopped for an operator (needs_intervention), by the node or compensation they "
        "stopped at: a compensation or an on_failure='intervene' node failed for good, a "
        "deploy left a state or node the run cannot go on with, or a row failed its checksum.",
        ("graph", "step"),
    ),
    "recoveries": ("recoveries", "Node messages the recovery sweep published again.", ("reason",)),
    "started": ("executions_started", "Executions started.", ("graph",)),
    "failed": (
        "node_failures",
        "Node visits that failed for good (no retry left, or an error not retried).",
        ("graph", "node", "error"),
    ),
    "slow": (
        "slow_nodes",
        "Node attempts whose function ran longer than slow_node_after.",
        ("graph", "node"),
    ),
    "held": (
        "flow_held",
        "Node attempts held back by flow control, by what: 'breaker <name>' (its "
        "rejections), 'rate <name>', or 'slot' (in line for a concurrency key).",
        ("graph", "node", "by"),
    ),
    "deleted": (
        "executions_deleted",
        "Runs deleted by an operator (durable delete), children deleted with them included; "
        "retention's prune is not counted here.",
        ("graph",),
    ),
}
HISTOGRAMS: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...]]] = {
    "wake_lag": (
        "wake_lag_seconds",
        "From a timer's due time to its node running again.",
        ("graph", "kind"),
        WAKE_BUCKETS,
    ),
    "node_duration": (
        "node_duration_seconds",
        "Wall time of node and compensation tasks.",
        ("graph", "node", "kind"),
        NODE_BUCKETS,
    ),
    "recovery_lag": (
        "recovery_lag_seconds",
        "From the last commit of a run whose attempt died to that visit running again: how "
        "long a crash held the run up, at most.",
        ("graph",),
        RECOVERY_BUCKETS,
    ),
    "checkpoint_write": (
        "checkpoint_write_seconds",
        "Time of one checkpoint commit (one transaction).",
        ("graph", "kind"),
        WRITE_BUCKETS,
    ),
}


@dataclass(frozen=True)
class _Instruments:
    commits: Counter
    retries: Counter
    compensations: Counter
    finished: Counter
    interventions: Counter
    recoveries: Counter
    started: Counter
    failed: Counter
    slow: Counter
    held: Counter
    deleted: Counter
    wake_lag: Histogram
    node_duration: Histogram
    recovery_lag: Histogram
    checkpoint_write: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> _Instruments:
        """Every instrument of COUNTERS and HISTOGRAMS, registered in ``registry``."""
        made: dict[str, Any] = {
            field: Counter(f"{PREFIX}_{name}", doc, labels, registry=registry)
            for field, (name, doc, labels) in COUNTERS.items()
        }
        for field, (name, doc, labels, buckets) in HISTOGRAMS.items():
            made[field] = Histogram(
                f"{PREFIX}_{name}", doc, labels, buckets=buckets, registry=registry
            )
        return cls(**made)


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

    def execution_started(self, execution_id: str, graph: str, version: str | None) -> None:
        self.m.started.labels(graph).inc()

    def node_failed(self, execution_id: str, graph: str, node: str, error: dict[str, Any]) -> None:
        self.m.failed.labels(graph, node, str(error.get("type", ""))).inc()

    def node_slow(self, execution_id: str, graph: str, node: str, seconds: float) -> None:
        self.m.slow.labels(graph, node).inc()

    def recovery_lag(self, graph: str, node: str, seconds: float) -> None:
        self.m.recovery_lag.labels(graph).observe(max(seconds, 0.0))

    def woke(self, graph: str, node: str, kind: str, lag: float) -> None:
        self.m.wake_lag.labels(graph, kind).observe(max(lag, 0.0))

    def node_held(self, graph: str, node: str, by: str) -> None:
        # A slot's key would make a label per customer: count the slot, not the key.
        self.m.held.labels(graph, node, "slot" if by.startswith("slot ") else by).inc()

    def execution_deleted(self, execution_id: str, graph: str, status: Status) -> None:
        self.m.deleted.labels(graph).inc()

    def attempt_finished(self, graph: str, node: str, kind: str, seconds: float) -> None:
        self.m.node_duration.labels(graph, node, kind).observe(seconds)

    def checkpoint_written(self, graph: str, node: str, kind: str, seconds: float) -> None:
        self.m.checkpoint_write.labels(graph, kind).observe(seconds)


def instrument(durable: Durable, registry: CollectorRegistry = REGISTRY) -> PrometheusHooks:
    """Count ``durable``'s events and time its node attempts; returns the hooks installed.

    Call it where the Celery app is built (the module ``celery -A`` imports), so that the
    worker's pool children inherit it. Hooks already set on ``durable`` keep being called.
    A worker of the app that starts without PROMETHEUS_MULTIPROC_DIR logs a warning: what it
    counts would stay in its own processes, where no metrics server reads it.
    """
    if isinstance(durable.hooks, PrometheusHooks):
        return durable.hooks
    hooks = PrometheusHooks(registry, inner=durable.hooks)
    durable.hooks = hooks
    app = weakref.ref(durable.app)

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app() and (why := unread()) is not None:
            logger.warning("celery-durable metrics: %s", why)

    worker_init.connect(on_worker_init, weak=False, dispatch_uid=f"{PREFIX}-{id(durable)}")
    return hooks


def unread() -> str | None:
    """Why this process's counters cannot reach a metrics server (None: they can): without
    prometheus_client's multiprocess mode they live in this process's memory only."""
    if values.ValueClass is not values.MutexValue:
        return None
    late = (
        f"{MULTIPROC_ENV} was set after prometheus_client was imported"
        if os.environ.get(MULTIPROC_ENV)
        else f"{MULTIPROC_ENV} is not set"
    )
    return (
        f"{late}, so this worker's counters (node commits, retries, durations) stay in its own "
        f"processes and `durable metrics` cannot read them. Set {MULTIPROC_ENV} to an empty "
        "directory, the same for the workers and `durable metrics`, before either starts."
    )
