"""Real ``celery worker`` subprocesses for tests that crash them: each in a session of its
own, so that SIGKILL of its process group (main process and pool children) is what a machine
failure looks like to the broker and the database, and the test process survives it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

READY_TIMEOUT = 30.0
DEFAULT_ARGS = (
    "worker", "-P", "prefork", "--prefetch-multiplier", "1", "-l", "INFO",
    "--without-gossip", "--without-mingle",
)  # fmt: skip


class WorkerProcess:
    """One ``celery worker`` process group, its output in a log file."""

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


class WorkerProcesses:
    """Starts workers for a Celery app module (``celery -A <app>``); ``cleanup()`` kills every
    one still alive. ``env`` is the environment they run with, on top of this process's less
    its ``CELERY_DURABLE_*`` variables; ``cwd`` is where they import the app from."""

    def __init__(self, app: str, env: dict[str, str], logs: Path, cwd: Path | None = None) -> None:
        self.app = app
        self.env = env
        self.logs = logs
        self.cwd = cwd or Path.cwd()
        self.started: list[WorkerProcess] = []

    def start(
        self,
        queue: str | None = None,
        concurrency: int = 2,
        extra_env: dict[str, str] | None = None,
        wait: bool = True,
        args: Sequence[str] | None = None,
    ) -> WorkerProcess:
        """``args`` replace the worker arguments after ``-A <app>`` (queue and name are added)."""
        name = f"w{len(self.started)}-{uuid.uuid4().hex[:6]}"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_DURABLE_")}
        environ.update(self.env)
        environ.update(extra_env or {})
        log = self.logs / f"worker-{name}.log"
        args = args if args is not None else (*DEFAULT_ARGS, "-c", str(concurrency))
        cmd = [sys.executable, "-m", "celery", "-A", self.app, *args, "-n", f"{name}@%h"]
        if queue:
            cmd += ["-Q", queue]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=self.cwd, env=environ, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        worker = WorkerProcess(name, proc, log)
        self.started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.started if w.alive()]

    def cleanup(self) -> None:
        for worker in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
        for worker in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=10)
