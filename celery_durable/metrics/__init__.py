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
    Runs stopped for an operator (``needs_intervention``), by the node or compensation they
    stopped at: a compensation or an ``on_failure="intervene"`` node failed for good, a
    deploy left a state or node the run cannot go on with, or a row failed its checksum.
``celery_durable_recoveries_total{reason}``
    Node messages the recovery sweep published again (``due``: a retry whose time came;
    ``stale``: a running execution with no commit and nothing in flight).
``celery_durable_wake_lag_seconds{graph,kind}`` (histogram)
    From a timer's due time (a sleep's end, an event wait's timeout) to its node running
    again. Filled by the ``Hooks.woke`` hook.
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
``celery_durable_executions_by_version{graph,version,status}``
    The same, per version of the graph the runs are pinned to (``version=""``: runs started
    before runs were pinned); every status of every version stored or defined in the serving
    process. An old version is drained when its pending, running, paused, waiting,
    compensating and needs_intervention series are all 0.
``celery_durable_needs_intervention{graph}``
    Executions stopped until an operator acts: a compensation, or a node of a graph with
    ``on_failure="intervene"``, failed for good; a deploy left a state that no longer fits
    the model, or a node or version no worker has; or a row failed its checksum. Alert on
    ``> 0``; ``durable show ID`` says which.
``celery_durable_stuck_executions{graph}``
    Running or compensating executions with no commit for longer than the threshold
    (``stuck_after`` setting, default 1800 s).
``celery_durable_longest_idle_seconds{graph}``
    Seconds since the least recently committed running or compensating execution last
    committed (0 when none is active).
``celery_durable_waiting{graph,kind}``
    Waiting executions by what they wait for first (sleep, event, interrupt).
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

Missing worker metrics are said, not silent: a worker of an instrumented app that starts
without multiprocess mode logs a warning, and ``celery durable metrics`` says at start when
the app does not call ``instrument(durable)``, when no multiprocess directory is set, or when
no worker has written to it yet (``worker_metrics_missing``).
"""

from celery_durable.metrics.instruments import PrometheusHooks, instrument
from celery_durable.metrics.server import (
    DatabaseCollector,
    MetricsServer,
    MetricsSources,
    MultiProcessDirCollector,
    metrics_registry,
    multiprocess_dir,
    run_metrics,
    serve_metrics,
    worker_metrics_missing,
)

__all__ = [
    "PrometheusHooks",
    "instrument",
    "DatabaseCollector",
    "MultiProcessDirCollector",
    "MetricsServer",
    "MetricsSources",
    "metrics_registry",
    "multiprocess_dir",
    "serve_metrics",
    "run_metrics",
    "worker_metrics_missing",
]
