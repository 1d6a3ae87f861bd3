"""Worker subprocesses and the checks the integration tests share."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from kombu import Connection

from celery_durable.model.records import Checkpoint
from celery_durable.worker_processes import WorkerProcess, WorkerProcesses
from tests.integration import app as app_module

REPO = Path(__file__).resolve().parents[2]
BROKER_URL = os.environ.get("CELERY_BROKER_URL") or app_module.DEFAULT_BROKER


# How a worker hands a node on: the next node inline in the same task (the default), or a
# message per node. Crash tests run both ways: a crash must be healed the same either way.
HAND_ON = {"inline": {}, "message": {"CELERY_DURABLE_INLINE_NODES": "0"}}


# The worker subprocesses tests start: celery_durable's own test helpers, used as users would.
Worker = WorkerProcess


class Workers(WorkerProcesses):
    """Workers of ``app`` (``tests.integration.app``) on the test's queue; ``cleanup`` also
    deletes the queue."""

    def __init__(
        self, env: dict[str, str], queue: str, logs: Path, app: str = "tests.integration.app"
    ) -> None:
        super().__init__(app, env, logs, cwd=REPO)
        self.queue = queue

    def start(  # type: ignore[override]
        self,
        concurrency: int = 2,
        extra_env: dict[str, str] | None = None,
        wait: bool = True,
        args: Sequence[str] | None = None,
    ) -> Worker:
        return super().start(self.queue, concurrency, extra_env, wait, args)

    def cleanup(self) -> None:
        super().cleanup()
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


def chain_events(ledger: Path, execution_id: str, node: str, what: str) -> list[list[str]]:
    """The chain ledger lines ``<execution> <node> <visit> <what> <pid>`` of one node."""
    return [
        line
        for line in ledger_lines(ledger)
        if line[0] == execution_id and line[1] == node and line[3] == what
    ]


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
