"""Crash injection: make a chosen node visit crash where a machine failure hurts most, then
check that the run still ends right and that every node committed once.

The points, in the order a visit meets them:

- ``before_commit:<node>``: the node's function ran (its side effects happened), nothing is
  committed. It runs again.
- ``after_commit:<node>``: the commit landed, nothing after it (hand-on, ack) happened. The
  visit is replayed, not run again.
- ``after_wake:<node>``: a wait of the node was woken (its wake committed), the node not yet
  dispatched. The recovery sweep dispatches it.
- ``compensation:<node>``: the node's compensation ran, its commit did not. It runs again.

Worker processes read ``CELERY_DURABLE_FAULT=<point>:<node>`` (``<point>`` alone: any node)
and SIGKILL their whole process group there, which is what a machine failure looks like to the
broker and the database (start workers in a session of their own). With
``CELERY_DURABLE_FAULT_TIMES=N`` and ``CELERY_DURABLE_FAULT_LEDGER=<file>`` only the first N
hits crash, counted in that file across restarts; ``CELERY_DURABLE_FAULT_PROBABILITY=p``
crashes a hit with probability p. In one process (the embedded worker), ``crash_at(...)``
arms a point instead: the attempt stops dead, as its process would, and the test heals it
with ``testing.fast_forward``. Unarmed, a hit costs one dictionary lookup.
"""

from __future__ import annotations

import fcntl
import os
import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

ENV = "CELERY_DURABLE_FAULT"
TIMES_ENV = "CELERY_DURABLE_FAULT_TIMES"
LEDGER_ENV = "CELERY_DURABLE_FAULT_LEDGER"
PROBABILITY_ENV = "CELERY_DURABLE_FAULT_PROBABILITY"
BEFORE_COMMIT = "before_commit"
AFTER_COMMIT = "after_commit"
AFTER_WAKE = "after_wake"
COMPENSATION = "compensation"
POINTS = (BEFORE_COMMIT, AFTER_COMMIT, AFTER_WAKE, COMPENSATION)


class SimulatedCrash(BaseException):
    """An armed fault point was hit in this process: the attempt stops where it is, and its
    task ends as if its worker had died (the run is healed like a crashed one)."""


@dataclass
class Armed:
    """A fault point armed in this process by ``crash_at``; ``crashed`` is set on each crash."""

    point: str
    node: str | None
    times: int | None
    probability: float | None
    crashes: int = 0
    crashed: threading.Event = field(default_factory=threading.Event)

    def matches(self, point: str, node: str) -> bool:
        if point != self.point or self.node not in (None, node):
            return False
        if self.times is not None and self.crashes >= self.times:
            return False
        return self.probability is None or random.random() < self.probability


_armed: list[Armed] = []


@contextmanager
def crash_at(
    point: str, node: str | None = None, *, times: int | None = 1, probability: float | None = None
) -> Iterator[Armed]:
    """Crash attempts in this process at ``point`` (of ``node``, or any), the first ``times``
    hits (None: every hit), each with ``probability`` (None: always), until the block ends."""
    if point not in POINTS:
        raise ValueError(f"unknown fault point {point!r}; use one of {', '.join(POINTS)}")
    armed = Armed(point, node, times, probability)
    _armed.append(armed)
    try:
        yield armed
    finally:
        _armed.remove(armed)


def hit(point: str, node: str) -> None:
    """A visit of ``node`` reached ``point``: crash here if a fault is armed for it."""
    for armed in _armed:
        if armed.matches(point, node):
            armed.crashes += 1
            armed.crashed.set()
            raise SimulatedCrash(f"{point}:{node}")
    spec = os.environ.get(ENV)
    if not spec:
        return
    want_point, _, want_node = spec.partition(":")
    if want_point == point and want_node in ("", node) and _this_time():
        os.killpg(os.getpgrp(), signal.SIGKILL)


def _this_time() -> bool:
    """Whether this hit crashes, by the environment's count and probability."""
    probability = os.environ.get(PROBABILITY_ENV)
    if probability and random.random() >= float(probability):
        return False
    times, ledger = os.environ.get(TIMES_ENV), os.environ.get(LEDGER_ENV)
    if not (times and ledger):
        return True
    with open(ledger, "a+") as counted:
        fcntl.flock(counted, fcntl.LOCK_EX)
        counted.seek(0)
        if len(counted.read().splitlines()) >= int(times):
            return False
        counted.write("crash\n")
        counted.flush()
        os.fsync(counted.fileno())
    return True
