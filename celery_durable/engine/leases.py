"""Leases for long node attempts, taken only once a node has run past ``lease_after``.

A short node never pays for a lease: registering with the keeper is a dictionary insert, and
the unique commit key already stops a duplicate. A node still running after ``lease_after``
gets a lease with a heartbeat from one thread per process, so it does not depend on the
broker's ack timeout, and its fencing token makes a commit from a superseded attempt fail.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from types import TracebackType

from celery_durable.forks import ProcessLocal
from celery_durable.persistence.visits import VisitLedger

logger = logging.getLogger(__name__)

Key = tuple[str, str, str, int]


def worker_id() -> str:
    """Who holds a lease or made a commit: host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    """One attempt's claim on its node visit; token 0 until the keeper takes it."""

    def __init__(self, keeper: LeaseKeeper, key: Key) -> None:
        self.keeper = keeper
        self.key = key
        self.started = time.monotonic()
        self.token = 0
        self.lost = False
        self.renewed = 0.0
        self.lock = threading.Lock()
        self.done = False

    def __enter__(self) -> Lease:
        self.keeper.add(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self.lock:
            self.done = True
        self.keeper.remove(self)


class LeaseKeeper:
    """The heartbeat thread of one process, started lazily, restarted after a fork."""

    def __init__(self, ledger: VisitLedger, after: float, ttl: float) -> None:
        self.ledger = ledger
        self.after = after
        self.ttl = ttl
        self._leases: dict[int, Lease] = {}
        self._lock = threading.Lock()
        # The heartbeat thread: one per process, a forked child starts its own.
        self._heartbeat = ProcessLocal(self._start)

    def watch(self, key: Key) -> Lease:
        return Lease(self, key)

    def add(self, lease: Lease) -> None:
        with self._lock:
            self._leases[id(lease)] = lease
        self._heartbeat.get()

    def _start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="durable-leases", daemon=True)
        thread.start()
        return thread

    def remove(self, lease: Lease) -> None:
        with self._lock:
            self._leases.pop(id(lease), None)

    def _run(self) -> None:
        tick = min(1.0, self.after / 2, self.ttl / 3)
        while True:
            time.sleep(tick)
            with self._lock:
                leases = list(self._leases.values())
            now = time.monotonic()
            for lease in leases:
                try:
                    self._tend(lease, now)
                except Exception:
                    # The commit is fenced by the token: a heartbeat that cannot reach the
                    # database only risks the lease expiring, which the fence then catches.
                    logger.exception("lease heartbeat for %s failed", lease.key)

    def _tend(self, lease: Lease, now: float) -> None:
        with lease.lock:
            if lease.done or lease.lost or now - lease.started < self.after:
                return
            if lease.token == 0:
                lease.token = self.ledger.take_lease(*lease.key, owner=worker_id(), ttl=self.ttl)
                lease.renewed = now
            elif now - lease.renewed >= self.ttl / 3:
                if self.ledger.renew_lease(*lease.key, token=lease.token, ttl=self.ttl):
                    lease.renewed = now
                else:
                    lease.lost = True
                    logger.warning("lease on %s was taken over by a newer attempt", lease.key)
