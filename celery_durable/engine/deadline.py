"""Node time limits, enforced by the engine per node rather than by Celery per task, so that a
node with ``timeout=`` can run inline after the one before it.

- Soft, at ``timeout``: NodeTimeout is raised inside the node (SIGALRM), an ordinary failure
  that its RetryPolicy sees. A node that catches it and returns anyway is failed all the same.
- Hard, ``HARD_LIMIT_GRACE`` seconds later: a node that ignored the soft limit (stuck in C
  code, or catching everything) ends its process with SIGKILL, and its message is redelivered
  as after any crash (acks late, reject on worker lost).

Both need the main thread of the process, where prefork children and the solo pool run tasks.
Under the threads pool (and the in-process test worker) there is no signal to raise with and
no process to spare: the limit is checked when the node returns, and a late result fails the
attempt with NodeTimeout, nothing committed. Celery's own time limits do not work under the
threads pool either.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from celery_durable.errors import NodeTimeout
from celery_durable.forks import ProcessLocal

logger = logging.getLogger(__name__)

HARD_LIMIT_GRACE = 5.0
WATCH_INTERVAL = 0.5


@contextmanager
def time_limit(
    node: str, seconds: float | None, on_kill: Callable[[], None] | None = None
) -> Iterator[None]:
    """Run the block under ``node``'s soft and hard limits (none when ``seconds`` is None).
    ``on_kill`` runs, best effort, just before the hard limit ends the process: it gives up
    the visit's lease, so that the redelivered message runs at once."""
    global _soft
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    watchdog = _watchdog()
    _soft = (node, seconds)
    # Whatever alarm the process had (its handler and its timer) is put back afterwards.
    handler = signal.signal(signal.SIGALRM, _expire)
    started = time.monotonic()
    pending, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    token = watchdog.arm(node, started + seconds + HARD_LIMIT_GRACE, on_kill)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _soft = None
        watchdog.disarm(token)
        signal.signal(signal.SIGALRM, handler)
        if pending:
            left = pending - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))


# The node under a soft limit in this process's main thread; SIGALRM's handler raises for it.
_soft: tuple[str, float] | None = None


def _expire(signum: int, frame: FrameType | None) -> None:
    if _soft is not None:
        raise NodeTimeout(*_soft)


class _Watchdog:
    """One thread per process: ends the process when an armed hard limit passes. It looks
    every WATCH_INTERVAL seconds instead of being woken, so arming costs a dict insert."""

    def __init__(self) -> None:
        self._armed: dict[int, tuple[float, str, Callable[[], None] | None]] = {}
        self._next = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="durable-deadlines", daemon=True).start()

    def arm(self, node: str, at: float, on_kill: Callable[[], None] | None) -> int:
        with self._lock:
            self._next += 1
            self._armed[self._next] = (at, node, on_kill)
            return self._next

    def disarm(self, token: int) -> None:
        with self._lock:
            self._armed.pop(token, None)

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL)
            now = time.monotonic()
            with self._lock:
                late = [(node, kill) for at, node, kill in self._armed.values() if at <= now]
            if late:
                _end(*late[0])


def _end(node: str, on_kill: Callable[[], None] | None) -> None:
    logger.critical(
        "node %s ran past its hard time limit; ending process %d so that its message is "
        "redelivered",
        node,
        os.getpid(),
    )
    if on_kill is not None:
        try:
            on_kill()
        except Exception:
            logger.exception("could not give up the lease of node %s", node)
    logging.shutdown()
    os.kill(os.getpid(), signal.SIGKILL)


def _start_watchdog() -> _Watchdog:
    return _Watchdog()


# This process's watchdog; a forked child (a prefork pool process) gets its own.
_watchdogs = ProcessLocal(_start_watchdog)


def _watchdog() -> _Watchdog:
    return _watchdogs.get()
