"""Prometheus metrics: a known workload, then the numbers a scrape of /metrics shows.

In-process counters come from PrometheusHooks (its own registry per test, so counts are
exact); database gauges from DatabaseCollector on SQLite and PostgreSQL; multiprocess files
from several "containers" are summed; and a real prefork worker's pool children report
through PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, values
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel
from sqlalchemy import update

from celery_durable import (
    Compensated,
    Durable,
    ExecutionFailed,
    Hooks,
    NonRetryable,
    RetryPolicy,
    Status,
)
from celery_durable.metrics import (
    PrometheusHooks,
    instrument,
    metrics_registry,
    serve_metrics,
)
from celery_durable.model.cursor import Cursor
from celery_durable.model.records import utcnow
from celery_durable.persistence.schema import executions
from celery_durable.testing import embedded_app
from tests.unit import cli_app

REPO = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Job(BaseModel):
    x: int = 0
    fail: bool = False


class Order(BaseModel):
    reserved: bool = False


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def eventually(check: Callable[[], Samples], expected: dict[str, float], timeout: float) -> Samples:
    """Scrape until every ``name{labels}`` key in ``expected`` has its value (hooks and task
    signals run just after the commit that wait() returns on)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = check()
        got = {key: lookup(samples, key) for key in expected}
        if got == expected or time.monotonic() > deadline:
            assert got == expected
            return samples
        time.sleep(0.05)


def lookup(samples: Samples, key: str) -> float | None:
    name, _, rest = key.partition("{")
    labels = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if part)
    return value(samples, name, **{k: v.strip('"') for k, v in labels.items()})


def test_a_known_workload_shows_in_the_scrape(durable: Durable, worker) -> None:
    registry = CollectorRegistry()
    instrument(durable, registry=registry)
    g = durable.graph("g", state=Job)

    @g.node
    def a(s: Job) -> dict[str, int]:
        return {"x": s.x + 1}

    @g.node(retry=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=False))
    def b(s: Job) -> dict[str, int]:
        if s.fail:
            raise ValueError("b fails on request")
        return {"x": s.x * 10}

    g.entry(a)
    g.edge(a, b)

    saga = durable.saga("s", state=Order)

    @saga.step
    def reserve(s: Order) -> dict[str, bool]:
        return {"reserved": True}

    @reserve.compensation
    def release(s: Order) -> None:
        return None

    @saga.step
    def charge(s: Order) -> None:
        raise NonRetryable("card declined")

    server = serve_metrics(durable, 0, "127.0.0.1", in_process=registry)
    try:
        with worker():
            runs = [g.delay(x=i) for i in range(3)]
            failing = g.delay(x=9, fail=True)
            order = saga.delay()
            assert [r.wait(timeout=10).x for r in runs] == [10, 20, 30]
            with pytest.raises(ExecutionFailed):
                failing.wait(timeout=10)
            with pytest.raises(Compensated):
                order.wait(timeout=10)
            samples = eventually(
                lambda: scrape(server.url),
                {
                    'celery_durable_node_commits_total{graph="g",node="a"}': 4,
                    'celery_durable_node_commits_total{graph="g",node="b"}': 3,
                    'celery_durable_node_retries_total{graph="g",node="b",error="ValueError"}': 1,
                    'celery_durable_executions_finished_total{graph="g",status="succeeded"}': 3,
                    'celery_durable_executions_finished_total{graph="g",status="failed"}': 1,
                    'celery_durable_executions_finished_total{graph="s",status="compensated"}': 1,
                    'celery_durable_compensations_total{graph="s",step="reserve"}': 1,
                    # a: 4 attempts; b: 3 successes + 2 attempts of the failing run.
                    'celery_durable_node_duration_seconds_count{graph="g",node="a",kind="node"}': 4,
                    'celery_durable_node_duration_seconds_count{graph="g",node="b",kind="node"}': 5,
                    "celery_durable_node_duration_seconds_count"
                    '{graph="s",node="reserve",kind="compensation"}': 1,
                },
                timeout=5,
            )
    finally:
        server.close()

    # Database gauges: every status of every graph, zeros included.
    assert value(samples, "celery_durable_executions", graph="g", status="succeeded") == 3
    assert value(samples, "celery_durable_executions", graph="g", status="failed") == 1
    assert value(samples, "celery_durable_executions", graph="g", status="running") == 0
    assert value(samples, "celery_durable_executions", graph="s", status="compensated") == 1
    assert value(samples, "celery_durable_needs_intervention", graph="g") == 0
    assert value(samples, "celery_durable_needs_intervention", graph="s") == 0
    assert value(samples, "celery_durable_stuck_executions", graph="g") == 0
    assert value(samples, "celery_durable_longest_idle_seconds", graph="g") == 0
    assert value(samples, "celery_durable_database_up") == 1
    assert value(samples, "celery_durable_stuck_threshold_seconds") == 1800
    assert (value(samples, "celery_durable_scrape_duration_seconds") or 0) > 0
    assert len([k for k in samples if k[0] == "celery_durable_executions"]) == 2 * len(Status)
    # The same runs, by the version of their graph they are pinned to (g's default: its
    # structure's fingerprint).
    by_version = "celery_durable_executions_by_version"
    version = g.version
    assert value(samples, by_version, graph="g", version=version, status="succeeded") == 3
    assert value(samples, by_version, graph="g", version=version, status="failed") == 1
    assert value(samples, by_version, graph="g", version=version, status="running") == 0
    assert value(samples, by_version, graph="s", version=saga.version, status="compensated") == 1
    # Checkpoint write latency arrives once the engine calls Hooks.checkpoint_written.
    if hasattr(Hooks, "checkpoint_written"):
        written = value(
            samples, "celery_durable_checkpoint_write_seconds_count", graph="g", kind="node"
        )
        assert written == 7


def test_hooks_pass_events_on_and_time_checkpoint_writes() -> None:
    seen: list[tuple[str, ...]] = []

    class Audit(Hooks):
        def recovered(self, execution_id: str, node: str, reason: str) -> None:
            seen.append((execution_id, node, reason))

    registry = CollectorRegistry()
    hooks = PrometheusHooks(registry, inner=Audit())
    hooks.recovered("e1", "n1", "stale")
    hooks.checkpoint_written("g", "n1", "node", 0.002)
    assert seen == [("e1", "n1", "stale")]
    assert registry.get_sample_value("celery_durable_recoveries_total", {"reason": "stale"}) == 1
    write = {"graph": "g", "kind": "node"}
    assert registry.get_sample_value("celery_durable_checkpoint_write_seconds_count", write) == 1
    assert (
        registry.get_sample_value(
            "celery_durable_checkpoint_write_seconds_bucket", {**write, "le": "0.0025"}
        )
        == 1
    )


@pytest.fixture
def client(database_url: str) -> Iterator[Durable]:
    """A migrated Durable on SQLite and on PostgreSQL, its messages sent nowhere."""
    durable = Durable(embedded_app(f"m-{uuid.uuid4().hex[:8]}"), database_url=database_url)
    durable.migrate()
    yield durable
    durable.db.dispose()


def test_stuck_executions_are_counted_from_the_database(client: Durable) -> None:
    g = client.graph("slow", state=Job)

    @g.node
    def only(s: Job) -> None:
        return None

    g.entry(only)
    runs = [g.delay(x=i) for i in range(3)]  # no worker: they stay running
    with client.db.engine.begin() as conn:
        conn.execute(
            update(executions)
            .where(executions.c.id == runs[0].id)
            .values(updated_at=utcnow() - timedelta(hours=2))
        )
    registry = metrics_registry(client, stuck_after=600, in_process=None)
    sample = registry.get_sample_value
    assert sample("celery_durable_executions", {"graph": "slow", "status": "running"}) == 3
    assert sample("celery_durable_stuck_executions", {"graph": "slow"}) == 1
    idle = sample("celery_durable_longest_idle_seconds", {"graph": "slow"})
    assert idle is not None and 7200 <= idle < 7300
    assert sample("celery_durable_stuck_threshold_seconds") == 600


def test_runs_are_counted_per_version_in_the_same_scrape(client: Durable) -> None:
    # Given two versions side by side, runs on each, and one stored before runs were pinned
    versions = [client.graph("order", state=Job, version=v) for v in ("1", "2")]
    for g in versions:

        @g.node
        def only(s: Job) -> None:
            return None

        g.entry(only)
    for _ in range(2):
        versions[0].delay()  # no worker: they stay running
    versions[1].delay()
    client.store.create_execution(
        execution_id="unpinned",
        graph="order",
        fingerprint="f",
        state={},
        cursor=Cursor(),
        status=Status.FAILED,
    )

    # When scraped
    sample = metrics_registry(client, in_process=None).get_sample_value

    # Then each version has its counts, every status reported, and the totals are their sums
    def runs(version: str, status: str) -> float | None:
        labels = {"graph": "order", "version": version, "status": status}
        return sample("celery_durable_executions_by_version", labels)

    assert (runs("1", "running"), runs("2", "running"), runs("", "failed")) == (2, 1, 1)
    assert (runs("1", "succeeded"), runs("2", "failed"), runs("", "running")) == (0, 0, 0)
    assert sample("celery_durable_executions", {"graph": "order", "status": "running"}) == 3
    assert sample("celery_durable_executions", {"graph": "order", "status": "failed"}) == 1


def test_breakers_are_scraped_from_the_database(client: Durable) -> None:
    client.breaker("payments")
    client.set_breaker("payments", "open", by="ops")
    client.runtime.flow.admit("payments")  # rejected: it is open
    registry = metrics_registry(client, stuck_after=600, in_process=None)
    sample = registry.get_sample_value
    assert sample("celery_durable_breaker_state", {"breaker": "payments"}) == 2
    assert sample("celery_durable_breaker_rejections_total", {"breaker": "payments"}) == 1


def test_a_database_outage_reads_as_down_not_as_a_failed_scrape() -> None:
    durable = Durable(embedded_app(), database_url="postgresql+psycopg://nobody@127.0.0.1:1/x")
    registry = metrics_registry(durable, in_process=None)
    assert registry.get_sample_value("celery_durable_database_up") == 0
    assert registry.get_sample_value("celery_durable_executions", {"graph": "g"}) is None


# Two "containers" whose processes have the same pid (7), as containers sharing a volume do:
# each writes its own subdirectory, and the server sums them all.
CONTAINERS = """
import os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from prometheus_client import values
from celery_durable.metrics import PrometheusHooks
hooks = PrometheusHooks()
for host, events in (("host-a", 2), ("host-b", 3)):
    if os.fork() == 0:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(sys.argv[1], host)
        values.ValueClass = values.MultiProcessValue(lambda: 7)
        for _ in range(events):
            hooks.recovered("e", "n", "due")
        os._exit(0)
    assert os.wait()[1] == 0
"""


def test_multiprocess_files_of_every_container_are_summed(tmp_path: Path) -> None:
    root = tmp_path / "metrics"
    for host in ("host-a", "host-b"):
        (root / host).mkdir(parents=True)
    subprocess.run([sys.executable, "-c", CONTAINERS, str(root)], check=True, cwd=REPO)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.db")) == [
        "host-a/counter_7.db",
        "host-b/counter_7.db",
    ]
    durable = Durable(embedded_app(), database_url=f"sqlite:///{tmp_path / 'd.sqlite3'}")
    durable.migrate()
    registry = metrics_registry(durable, multiprocess=str(root))
    assert registry.get_sample_value("celery_durable_recoveries_total", {"reason": "due"}) == 5


# -- prefork: real worker processes, RabbitMQ and PostgreSQL --------------------------------

PREFORK_WORKER = """
import sys
from celery_durable.metrics import instrument
from tests.integration import app as module
instrument(module.durable)
module.app.worker_main([
    "worker", "-P", "prefork", "-c", "2", "-Q", sys.argv[1], "-l", "INFO",
    "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle", "-n", "metrics@%h",
])
"""


@pytest.mark.integration
def test_prefork_pool_children_report_through_the_multiprocess_dir(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.integration import app as app_module

    queue = f"durable-metrics-{uuid.uuid4().hex[:10]}"
    root = tmp_path / "metrics"
    (root / "worker-1").mkdir(parents=True)
    env = {
        "CELERY_DURABLE_DATABASE_URL": pg_url,
        "DURABLE_TEST_QUEUE": queue,
    }
    for name in list(os.environ):
        if name.startswith("CELERY_DURABLE_"):
            monkeypatch.delenv(name)
    for name, val in env.items():
        monkeypatch.setenv(name, val)
    child_env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    child_env.update(PROMETHEUS_MULTIPROC_DIR=str(root / "worker-1"), PYTHONPATH=str(REPO))
    log = tmp_path / "worker.log"
    built = app_module.build()
    built.durable.migrate()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", PREFORK_WORKER, queue],
            cwd=REPO,
            env=child_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = serve_metrics(built.durable, 0, "127.0.0.1", multiprocess=str(root))
    try:
        runs = [built.chain.delay() for _ in range(4)]
        for run in runs:
            assert run.wait(timeout=60).count == 5, log.read_text()[-3000:]
        expected: dict[str, float] = {
            f'celery_durable_node_commits_total{{graph="chain",node="{n}"}}': 4
            for n in ("n1", "n2", "n3", "n4", "n5")
        }
        expected['celery_durable_executions_finished_total{graph="chain",status="succeeded"}'] = 4
        expected['celery_durable_executions{graph="chain",status="succeeded"}'] = 4
        expected[
            'celery_durable_node_duration_seconds_count{graph="chain",node="n5",kind="node"}'
        ] = 4
        eventually(lambda: scrape(server.url), expected, timeout=10)
        assert list((root / "worker-1").glob("counter_*.db")), "no per-process files written"
    finally:
        server.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        built.app.close()
        built.durable.db.dispose()
        _delete_queue(queue)


def _delete_queue(queue: str) -> None:
    from kombu import Connection

    from tests.integration.app import DEFAULT_BROKER

    url = os.environ.get("CELERY_BROKER_URL") or DEFAULT_BROKER
    with contextlib.suppress(Exception), Connection(url, connect_timeout=5) as conn:
        conn.default_channel.queue_delete(queue)


def test_the_metrics_command_listens_on_loopback_and_says_what_keeps_worker_metrics_away(
    durable: Durable, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    served: dict[str, object] = {}

    def run(durable: Durable, port: int, addr: str, **sources: object) -> None:
        served.update(addr=addr, port=port, **sources)

    monkeypatch.setattr("celery_durable.metrics.run_metrics", run)
    for name in ("PROMETHEUS_MULTIPROC_DIR", "CELERY_DURABLE_METRICS_DIR"):
        monkeypatch.delenv(name, raising=False)

    bare = cli_app.invoke(durable, "metrics")
    assert bare.exit_code == 0, bare.output
    assert served["addr"] == "127.0.0.1"  # like `web --host`: loopback unless told
    assert "http://127.0.0.1:9808/metrics" in bare.stdout
    assert "does not call celery_durable.metrics.instrument(durable)" in bare.stderr
    assert "no multiprocess directory" in bare.stderr
    assert "Set PROMETHEUS_MULTIPROC_DIR to the same empty directory" in bare.stderr

    instrument(durable, CollectorRegistry())
    empty = cli_app.invoke(durable, "metrics", "--multiprocess-dir", str(tmp_path))
    assert empty.stderr.startswith(f"warning: no worker has written metrics to {tmp_path} yet")
    assert "instrument(durable)" in empty.stderr and "does not call" not in empty.stderr
    (tmp_path / "worker-a").mkdir()
    (tmp_path / "worker-a" / "counter_1234.db").write_bytes(b"")
    written = cli_app.invoke(durable, "metrics", "--multiprocess-dir", str(tmp_path))
    assert written.exit_code == 0 and written.stderr == ""
    assert served["multiprocess"] == str(tmp_path)


def test_a_worker_of_an_instrumented_app_says_when_its_counters_cannot_be_read(
    durable: Durable, worker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    instrument(durable, CollectorRegistry())
    with caplog.at_level(logging.WARNING, logger="celery_durable.metrics"), worker():
        pass
    said = [r.getMessage() for r in caplog.records if r.name.startswith("celery_durable.metrics")]
    assert len(said) == 1 and "PROMETHEUS_MULTIPROC_DIR is not set" in said[0], said
    assert "`durable metrics` cannot read them" in said[0]

    caplog.clear()
    monkeypatch.setattr(values, "ValueClass", object)  # as in multiprocess mode
    with caplog.at_level(logging.WARNING, logger="celery_durable.metrics"), worker():
        pass
    assert not [r for r in caplog.records if r.name.startswith("celery_durable.metrics")]


def test_the_needs_intervention_gauge_says_every_way_a_run_gets_there(durable: Durable) -> None:
    registry = metrics_registry(durable, in_process=None)
    (gauge,) = [m for m in registry.collect() if m.name == "celery_durable_needs_intervention"]
    for cause in ("a compensation", "on_failure='intervene'", "deploy", "checksum", "durable show"):
        assert cause in gauge.documentation, cause
