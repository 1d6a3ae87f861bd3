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

logger = logging.getLogger(__name__)

HARD_LIMIT_GRACE = 5.0


@contextmanager
def time_limit(
    node: str, seconds: float | None, on_kill: Callable[[], None] | None = None
) -> Iterator[None]:
    """Run the block under ``node``'s soft and hard limits (none when ``seconds`` is None).
    ``on_kill`` runs, best effort, just before the hard limit ends the process: it gives up
    the visit's lease, so that the redelivered message runs at once."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise NodeTimeout(node, seconds)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    token = _watchdog().arm(node, time.monotonic() + seconds + HARD_LIMIT_GRACE, on_kill)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
        _watchdog().disarm(token)


class _Watchdog:
    """One thread per process: ends the process when an armed hard limit passes."""

    def __init__(self) -> None:
        self._armed: dict[int, tuple[float, str, Callable[[], None] | None]] = {}
        self._next = 0
        self._wake = threading.Condition()
        threading.Thread(target=self._run, name="durable-deadlines", daemon=True).start()

    def arm(self, node: str, at: float, on_kill: Callable[[], None] | None) -> int:
        with self._wake:
            self._next += 1
            self._armed[self._next] = (at, node, on_kill)
            self._wake.notify()
            return self._next

    def disarm(self, token: int) -> None:
        with self._wake:
            self._armed.pop(token, None)

    def _run(self) -> None:
        with self._wake:
            while True:
                now = time.monotonic()
                late = [(node, kill) for at, node, kill in self._armed.values() if at <= now]
                if late:
                    _end(*late[0])
                soonest = min((at for at, _, _ in self._armed.values()), default=now + 60)
                self._wake.wait(max(soonest - now, 0.01))


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


_watchdogs: dict[int, _Watchdog] = {}
_lock = threading.Lock()


def _watchdog() -> _Watchdog:
    """This process's watchdog; a forked child (a prefork pool process) starts its own."""
    with _lock:
        pid = os.getpid()
        if pid not in _watchdogs:
            _watchdogs[pid] = _Watchdog()
        return _watchdogs[pid]
