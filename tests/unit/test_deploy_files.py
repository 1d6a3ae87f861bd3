"""The shipped alert rules and dashboard name only metrics the code exports, are shaped for
Prometheus and Grafana to load, and the compose file's monitoring profile mounts them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from celery_durable import Durable
from celery_durable.metrics import DatabaseCollector, PrometheusHooks
from celery_durable.testing import embedded_app

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "celery-durable.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
COMPOSE = REPO / "docker-compose.yml"

METRIC = re.compile(r"\bcelery_durable_[a-z_]+")
# The names Prometheus stores for a family of each type.
SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}
SEVERITIES = {"critical", "warning", "info"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every series name the exporter can serve: the in-process instruments, registered in a
    fresh registry, and the database gauges, read from a migrated SQLite database."""
    registry = CollectorRegistry()
    PrometheusHooks(registry)
    families = list(registry.collect())
    database = tmp_path_factory.mktemp("deploy") / "durable.sqlite3"
    durable = Durable(embedded_app("deploy-files"), f"sqlite:///{database}")
    durable.migrate()
    try:
        families += list(DatabaseCollector(durable, stuck_after=60).collect())
    finally:
        durable.db.dispose()
    names = {f.name + suffix for f in families for suffix in SERIES_SUFFIXES[f.type]}
    assert "celery_durable_database_up" in names and "celery_durable_breaker_state" in names
    return names


@pytest.fixture(scope="module")
def alerts() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ALERTS.read_text())
    return loaded


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def rules(alerts: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for group in alerts["groups"]:
        yield from group["rules"]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[str]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield variable["definition"]
            yield variable["query"]["query"]


def test_every_metric_the_alerts_name_is_exported(
    alerts: dict[str, Any], exported: set[str]
) -> None:
    named = {m for rule in rules(alerts) for m in METRIC.findall(rule["expr"])}
    assert {
        "celery_durable_node_failures_total",
        "celery_durable_recovery_lag_seconds_bucket",
        "celery_durable_slow_nodes_total",
        "celery_durable_executions_started_total",
    } <= named
    assert named - exported == set()


def test_every_metric_the_dashboard_names_is_exported(
    dashboard: dict[str, Any], exported: set[str]
) -> None:
    named = {m for query in dashboard_queries(dashboard) for m in METRIC.findall(query)}
    assert len(named) >= 15
    assert named - exported == set()


def test_every_rule_can_page_someone_with_what_to_do(alerts: dict[str, Any]) -> None:
    names = []
    for group in alerts["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            names.append(rule["alert"])
            assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
            notes = rule["annotations"]
            assert notes["summary"] and notes["description"], rule["alert"]
            assert "celery -A proj durable " in notes["runbook"], rule["alert"]
    assert len(names) == len(set(names)), "alert names repeat"
    covered = {"NeedsIntervention", "StuckRuns", "BreakerOpen", "NodeFailureRateHigh"}
    covered |= {"WakeLag", "DatabaseDown", "ExporterDown"}
    assert {f"CeleryDurable{name}" for name in covered} <= set(names)


def test_prometheus_scrapes_the_job_the_alerts_expect_and_loads_them(
    alerts: dict[str, Any],
) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == [ALERTS.name]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "celery-durable"
    assert job["static_configs"][0]["targets"] == ["metrics:9808"]
    exprs = " ".join(r["expr"] for r in rules(alerts))
    assert 'up{job="celery-durable"}' in exprs


def test_the_dashboard_is_shaped_for_grafana_to_import(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "celery-durable" and dashboard["title"]
    assert dashboard["id"] is None
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["DS_PROMETHEUS"]["type"], variables["DS_PROMETHEUS"]["query"]) == (
        "datasource",
        "prometheus",
    )
    every = list(panels(dashboard))
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in every:
        box = panel["gridPos"]
        assert box["w"] > 0 and box["h"] > 0 and box["x"] + box["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        targets = panel["targets"]
        assert targets, panel["title"]
        assert all(t["expr"] and t["datasource"] == panel["datasource"] for t in targets)
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    assert not _overlaps(every), "panels overlap"


def _overlaps(every: list[dict[str, Any]]) -> list[tuple[str, str]]:
    cells: dict[tuple[int, int], str] = {}
    clashes = []
    for panel in every:
        box = panel["gridPos"]
        for x in range(box["x"], box["x"] + box["w"]):
            for y in range(box["y"], box["y"] + box["h"]):
                if (x, y) in cells:
                    clashes.append((cells[(x, y)], panel["title"]))
                cells[(x, y)] = panel["title"]
    return clashes


def test_the_dashboard_shows_what_an_operator_looks_for(dashboard: dict[str, Any]) -> None:
    queries = " ".join(dashboard_queries(dashboard))
    for needed in (
        "celery_durable_executions{",
        "histogram_quantile(0.95, sum by (graph, node, le) "
        "(rate(celery_durable_node_duration_seconds_bucket",
        "celery_durable_checkpoint_write_seconds_bucket",
        "celery_durable_node_retries_total",
        "celery_durable_compensations_total",
        "celery_durable_recoveries_total",
        "celery_durable_stuck_executions",
        "celery_durable_needs_intervention",
        "celery_durable_breaker_state",
        "celery_durable_wake_lag_seconds_bucket",
    ):
        assert needed in queries, needed


def test_the_monitoring_profile_mounts_the_shipped_files() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == grafana["profiles"] == ["monitoring"]

    def mounts(service: dict[str, Any]) -> dict[str, str]:
        """Container path -> file or directory of this checkout (read-only mounts only)."""
        found = {}
        for volume in service["volumes"]:
            source, target, *mode = volume.split(":")
            if source.startswith("./"):
                assert mode == ["ro"], volume
                found[target] = source
        return found

    assert mounts(prometheus) == {
        "/etc/prometheus/prometheus.yml": "./deploy/prometheus/prometheus.yml",
        "/etc/prometheus/alerts.yml": "./deploy/prometheus/alerts.yml",
    }
    grafana_mounts = mounts(grafana)
    assert grafana_mounts["/etc/grafana/dashboards/celery-durable.json"] == (
        "./deploy/grafana/celery-durable.json"
    )
    for source in [*mounts(prometheus).values(), *grafana_mounts.values()]:
        assert (REPO / source).exists(), source
    assert "metrics:9808" in PROMETHEUS_CONFIG.read_text()
    assert "9808" in str(services["metrics"]["command"])


def test_grafana_provisioning_finds_the_dashboard_and_prometheus() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    mounted = {
        target: REPO / source
        for source, target, *_ in (v.split(":") for v in services["grafana"]["volumes"])
        if source.startswith("./")
    }
    providers = mounted["/etc/grafana/provisioning/dashboards"]
    (provider,) = yaml.safe_load((providers / "celery-durable.yml").read_text())["providers"]
    assert provider["type"] == "file"
    dashboard_file = DASHBOARD.name
    assert mounted[f"{provider['options']['path']}/{dashboard_file}"] == DASHBOARD
    sources = mounted["/etc/grafana/provisioning/datasources"]
    (source,) = yaml.safe_load((sources / "prometheus.yml").read_text())["datasources"]
    assert (source["type"], source["url"], source["isDefault"]) == (
        "prometheus",
        "http://prometheus:9090",
        True,
    )
    assert sources.parent == GRAFANA_PROVISIONING
