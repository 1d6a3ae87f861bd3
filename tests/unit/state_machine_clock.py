"""Engine time that moves only when the state machine says so.

The engine reads the wall clock where it stamps a commit, schedules a retry or a sleep, judges
a run stale, budgets the nodes it runs inline, and decides whether a lease is due. A machine
that let real time in would take different steps from the same draws (a retry due or not, a
run stale or not, depending on how long the steps before took): Hypothesis then reports its
data generation as flaky and cannot replay or shrink what it found. Inside ``engine_time``
every such read returns the clock's time instead: ``utcnow`` wherever the package imported it,
``time.time``, ``time.monotonic`` and ``datetime.now`` in the engine's modules. ``time.sleep``
and everything else keep the real clock.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, tzinfo
from types import ModuleType
from typing import Any

from celery_durable.model import records

PACKAGE = "celery_durable"
ENGINE = f"{PACKAGE}.engine."
# Any fixed instant does: nothing compares the engine's stamps with the database's clock.
EPOCH = datetime(2030, 1, 1, tzinfo=UTC)


class Clock:
    """A wall clock and a monotonic clock that stand still until ``advance``."""

    def __init__(self) -> None:
        self.passed = 0.0

    def reset(self) -> None:
        self.passed = 0.0

    def advance(self, seconds: float) -> None:
        self.passed += seconds

    def utcnow(self) -> datetime:
        return EPOCH + timedelta(seconds=self.passed)

    def time(self) -> float:
        return self.utcnow().timestamp()

    def monotonic(self) -> float:
        return self.passed


class _TimeModule:
    """The ``time`` module as the engine sees it: the clock's time, real sleeps."""

    def __init__(self, clock: Clock) -> None:
        self.time = clock.time
        self.monotonic = clock.monotonic

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _datetime_class(clock: Clock) -> type[datetime]:
    class ClockDatetime(datetime):
        """``datetime`` whose ``now()`` is the clock's."""

        @classmethod
        def now(cls, tz: tzinfo | None = None) -> ClockDatetime:
            now = clock.utcnow()
            now = now.astimezone(tz) if tz is not None else now.replace(tzinfo=None)
            return cls.fromtimestamp(now.timestamp(), tz)

    return ClockDatetime


def _replacements(clock: Clock, name: str, module: ModuleType) -> dict[str, Any]:
    """What ``module`` reads the time with, and what it reads instead."""
    found: dict[str, Any] = {}
    if getattr(module, "utcnow", None) is records.utcnow:
        found["utcnow"] = clock.utcnow
    if not name.startswith(ENGINE):
        return found
    if getattr(module, "time", None) is time:
        found["time"] = _TimeModule(clock)
    if getattr(module, "datetime", None) is datetime:
        found["datetime"] = _datetime_class(clock)
    return found


@contextmanager
def engine_time(clock: Clock) -> Iterator[None]:
    """Every module of the package imported so far reads ``clock`` until the block ends."""
    patched = [
        (module, _replacements(clock, name, module))
        for name, module in list(sys.modules.items())
        if module is not None and (name == PACKAGE or name.startswith(f"{PACKAGE}."))
    ]
    saved = [(module, {name: getattr(module, name) for name in new}) for module, new in patched]
    try:
        for module, new in patched:
            for name, value in new.items():
                setattr(module, name, value)
        yield
    finally:
        for module, old in saved:
            for name, value in old.items():
                setattr(module, name, value)
