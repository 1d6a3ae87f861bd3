"""Flower sees every node task of an execution under a readable name with the execution id.

A real prefork worker (``-E``: task events) and a real Flower with basic auth, both processes
of their own on RabbitMQ; one ``chain`` execution from the test process; then Flower's API.

The worker and Flower invocations below are the ones docker-compose.yml runs (with the example
app instead of the test app): tests/integration/test_compose.py checks that they agree.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_durable import Compensated
from tests.integration.app import CHAIN_NODES, DurableApp
from tests.integration.harness import REPO, Workers
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

# `celery -A <app>` followed by these: what the compose worker and flower services run too.
WORKER_ARGS = ("worker", "-P", "prefork", "-c", "2", "-l", "INFO", "-E")
FLOWER_ARGS = ("flower",)
USER, PASSWORD = "user", "pass"
READY_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Flower:
    """A ``celery flower`` process group with basic auth, and a small API client."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        # No inherited FLOWER_* option (FLOWER_UNAUTHENTICATED_API above all); credentials by
        # environment, as docker-compose.yml passes them (not on the command line, which `ps`
        # shows to everyone on the host).
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("CELERY_DURABLE_", "FLOWER_"))
        }
        environ.update(env)
        environ["FLOWER_BASIC_AUTH"] = f"{USER}:{PASSWORD}"
        cmd = [
            sys.executable, "-m", "celery", "-A", "tests.integration.app", *FLOWER_ARGS,
            "--address=127.0.0.1", f"--port={self.port}",
        ]  # fmt: skip
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=environ, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, auth: bool = True) -> Any:
        request = urllib.request.Request(self.url(path))
        if auth:
            token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read().decode()
        is_json = response.headers.get_content_type() == "application/json"
        return json.loads(body) if is_json else body

    def status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.url(path), timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"flower exited:\n{self.output()}")
            with contextlib.suppress(OSError):
                if self.status("/healthcheck") == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"flower not up in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


@pytest.fixture
def flower(env: dict[str, str], tmp_path: Path) -> Iterator[Flower]:
    running = Flower(env, tmp_path / "flower.log")
    try:
        running.wait_ready()
        yield running
    finally:
        running.kill()


def test_flower_lists_each_node_task_with_its_execution_id(
    durable: DurableApp,
    flower: Flower,
    workers: Workers,
) -> None:
    # A worker sending task events (-E), the compose file's worker arguments.
    worker = workers.start(args=(*WORKER_ARGS, "--without-mingle"))
    # Flower receives events once it has seen this worker's: then no task event is missed.
    wait_for(
        lambda: any(name.startswith(worker.name) for name in flower.get("/api/workers?status=1")),
        READY_TIMEOUT,
        interval=0.1,
        what="flower to see the worker's events",
    )

    run = durable.chain.delay()
    assert run.wait(timeout=60).count == 5

    def node_tasks() -> dict[str, dict[str, Any]]:
        tasks: dict[str, dict[str, Any]] = flower.get(f"/api/tasks?search={run.id}")
        done = {k: t for k, t in tasks.items() if t.get("state") == "SUCCESS"}
        return done if len(done) == len(CHAIN_NODES) else {}

    tasks = wait_for(
        node_tasks, 20, interval=0.1, what=f"flower to list the 5 node tasks of {run.id}"
    )
    by_name = {task["name"]: (task_id, task) for task_id, task in tasks.items()}
    assert sorted(by_name) == [f"durable.chain.{n}" for n in CHAIN_NODES]
    for node in CHAIN_NODES:
        task_id, task = by_name[f"durable.chain.{node}"]
        assert task_id == f"{run.id}.{node}.1.1"  # <execution>.<node>.<visit>.<attempt>
        assert task["args"] == f"({run.id!r}, visit=1)"
        assert task["worker"].startswith(worker.name)
        info = flower.get(f"/api/task/info/{task_id}")
        assert (info["uuid"], info["name"], info["state"]) == (task_id, task["name"], "SUCCESS")
        assert run.id in info["args"]

    # The API is behind basic auth; /metrics and /healthcheck are not (so Flower's port must
    # not be exposed beyond the operators: docker-compose.yml publishes it on loopback only).
    assert flower.status("/api/tasks") == 401
    assert flower.status("/metrics") == 200
    assert "flower_events_total" in flower.get("/metrics", auth=False)


def test_flower_shows_each_attempt_as_what_it_was(
    durable: DurableApp,
    flower: Flower,
    workers: Workers,
    env: dict[str, str],
) -> None:
    # Each attempt is a task in Flower: reserve's retry is a message of its own; charge and
    # notify run inline after it, and report through the worker's own task events.
    worker = workers.start(args=(*WORKER_ARGS, "--without-mingle"))
    wait_for(
        lambda: any(name.startswith(worker.name) for name in flower.get("/api/workers?status=1")),
        READY_TIMEOUT,
        interval=0.1,
        what="flower to see the worker's events",
    )
    # reserve fails once then commits; notify fails for good; the saga then compensates.
    run = durable.order.delay(flaky={"reserve": 1}, fail_at="notify", no_retry=True)
    with pytest.raises(Compensated):
        run.wait(timeout=60)

    def states() -> dict[str, str]:
        tasks: dict[str, dict[str, Any]] = flower.get(f"/api/tasks?search={run.id}")
        return {task_id: task["state"] for task_id, task in tasks.items()}

    retried, committed = f"{run.id}.reserve.1.1", f"{run.id}.reserve.1.2"
    failed = f"{run.id}.notify.1.1"

    def listed_all() -> dict[str, str] | None:
        found = states()
        return found if {retried, committed, failed} <= set(found) else None

    seen = wait_for(listed_all, 20, interval=0.1, what="flower to list the attempts")
    assert (seen[retried], seen[committed], seen[failed]) == ("RETRY", "SUCCESS", "FAILURE")
    listed = flower.get(f"/api/tasks?state=FAILURE&search={run.id}")
    assert set(listed) == {failed}
    info = flower.get(f"/api/task/info/{failed}")
    assert "notify failed at attempt 1" in info["exception"]
    assert "Traceback" in info["traceback"] and "NonRetryable" in info["traceback"]
    retry = flower.get(f"/api/task/info/{retried}")
    assert "reserve failed at attempt 1" in retry["exception"]
