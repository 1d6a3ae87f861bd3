"""Waiting in tests, for unit and integration tests alike: poll a predicate until it holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], timeout: float, interval: float = 0.01, what: str = ""
) -> T:
    """The first truthy value ``predicate`` returns within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")


def waiting_kind(run: Any) -> str | None:
    """What a run waits for, read once: two reads of ``waiting_on`` may see two moments."""
    waiting = run.waiting_on
    return None if waiting is None else str(waiting["kind"])
