"""Worker subprocesses and the checks the integration tests share."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from kombu import Connection

from celery_durable.persistence.records import Checkpoint
from tests.integration import app as app_module

REPO = Path(__file__).resolve().parents[2]
BROKER_URL = os.environ.get("CELERY_BROKER_URL") or app_module.DEFAULT_BROKER
READY_TIMEOUT = 30.0


# How a worker hands a node on: the next node inline in the same task (the default), or a
# message per node. Crash tests run both ways: a crash must be healed the same either way.
HAND_ON = {"inline": {}, "message": {"CELERY_DURABLE_INLINE_NODES": "0"}}


class Worker:
    """One ``celery worker`` process group."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.output():
                return
            if not self.alive():
                raise RuntimeError(f"worker {self.name} exited:\n{self.output()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"worker {self.name} not ready in {timeout}s:\n{self.output()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole group (main process and pool children), as a machine failure."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (running tasks finish); SIGKILL if it takes longer than ``timeout``."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        self.kill()

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)


class Workers:
    """Starts worker subprocesses on the test's queue; ``cleanup`` kills every one of them."""

    def __init__(self, env: dict[str, str], queue: str, logs: Path) -> None:
        self.env = env
        self.queue = queue
        self.logs = logs
        self.started: list[Worker] = []

    def start(
        self,
        concurrency: int = 2,
        extra_env: dict[str, str] | None = None,
        wait: bool = True,
        args: Sequence[str] | None = None,
    ) -> Worker:
        """``args`` replace the worker arguments after ``-A <app>`` (queue and name are added)."""
        name = f"w{len(self.started)}-{uuid.uuid4().hex[:6]}"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_DURABLE_")}
        environ.update(self.env)
        environ.update(extra_env or {})
        log = self.logs / f"worker-{name}.log"
        if args is None:
            args = (
                "worker", "-P", "prefork", "-c", str(concurrency),
                "--prefetch-multiplier", "1", "-l", "INFO", "--without-gossip", "--without-mingle",
            )  # fmt: skip
        cmd = [
            sys.executable, "-m", "celery", "-A", "tests.integration.app", *args,
            "-Q", self.queue, "-n", f"{name}@%h",
        ]  # fmt: skip
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=environ, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        worker = Worker(name, proc, log)
        self.started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    def alive(self) -> list[Worker]:
        return [w for w in self.started if w.alive()]

    def cleanup(self) -> None:
        for worker in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
        for worker in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=10)
        with contextlib.suppress(Exception), Connection(BROKER_URL, connect_timeout=5) as conn:
            channel = conn.default_channel
            with contextlib.suppress(Exception):
                channel.queue_purge(self.queue)
            channel.queue_delete(self.queue)


def ledger_lines(path: Path) -> list[list[str]]:
    """The ledger's complete lines, split into words (a line still being written is skipped)."""
    text = path.read_text()
    lines = text.split("\n")[:-1]  # drop the (possibly partial) tail after the last newline
    return [line.split() for line in lines if line]


def settle(ledger: Path, quiet: float = 1.0, timeout: float = 30.0) -> None:
    """Wait until nothing has been appended for ``quiet`` s: late duplicates have run too."""
    deadline = time.monotonic() + timeout
    size, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_size = ledger.stat().st_size
        if now_size != size:
            size, since = now_size, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.05)


def assert_one_checkpoint_per_visit(history: list[Checkpoint]) -> None:
    counts = Counter((cp.kind, cp.node, cp.visit) for cp in history)
    twice = {key: n for key, n in counts.items() if n > 1}
    assert not twice, f"visits committed more than once: {twice}"


class Killer(threading.Thread):
    """Every ``every`` s: SIGKILL one worker (alternating), start its replacement with ``env``."""

    def __init__(
        self, pool: Workers, live: list[Worker], every: float, env: dict[str, str]
    ) -> None:
        super().__init__(name="soak-killer", daemon=True)
        self.pool, self.live, self.every, self.env = pool, live, every, env
        self.kills = 0
        self.errors: list[BaseException] = []
        self.halt = threading.Event()

    def run(self) -> None:
        slot, due = 0, time.monotonic() + self.every / 2
        while not self.halt.wait(max(0.0, due - time.monotonic())):
            due += self.every  # a steady cadence: the replacement's boot is inside the period
            try:
                self.live[slot].kill()
                self.kills += 1
                self.live[slot] = self.pool.start(concurrency=2, extra_env=self.env)
            except BaseException as exc:  # reported by the test, not lost in a thread
                self.errors.append(exc)
                return
            slot ^= 1

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=60)
