"""Retry policy: a validated value object, and backoff as a pure function of it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from celery_durable.errors import EventTimeout, InvalidNodeOption


class NonRetryable(Exception):
    """Raise (or subclass) this in a node to fail it at once, whatever its RetryPolicy says."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a node is retried.

    Delays grow as ``initial_delay * backoff ** (attempt - 1)``, capped by ``max_delay``. With
    ``jitter`` each delay is drawn uniformly from its upper half, so retries of many runs spread
    out without ever collapsing to zero. Attempts are counted in the database, so a worker crash
    does not hand a node a fresh set.
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    backoff: float = 2.0
    max_delay: float = 60.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    dont_retry_on: tuple[type[BaseException], ...] = field(default=(NonRetryable, EventTimeout))

    def __post_init__(self) -> None:
        problems = []
        if self.max_attempts < 1:
            problems.append("max_attempts must be at least 1")
        if self.initial_delay < 0:
            problems.append("initial_delay must be 0 or more seconds")
        if self.backoff < 1:
            problems.append("backoff must be 1 or more (1 keeps delays constant)")
        if self.max_delay < self.initial_delay:
            problems.append("max_delay must be at least initial_delay")
        for name in ("retry_on", "dont_retry_on"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                value = tuple(value) if isinstance(value, list | set) else (value,)
                object.__setattr__(self, name, value)
            if not all(isinstance(t, type) and issubclass(t, BaseException) for t in value):
                problems.append(f"{name} must hold exception classes")
        if problems:
            raise InvalidNodeOption(f"Invalid RetryPolicy: {'; '.join(problems)}.")

    @classmethod
    def never(cls) -> RetryPolicy:
        """One attempt only."""
        return cls(max_attempts=1)

    def is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, self.dont_retry_on):
            return False
        return isinstance(exc, self.retry_on)

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether a failure of attempt number ``attempt`` (from 1) earns another attempt."""
        return attempt < self.max_attempts and self.is_retryable(exc)

    def next_delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after attempt number ``attempt`` (from 1) failed."""
        low, high = self.bounds(attempt)
        if low == high:
            return high
        return (rng or random).uniform(low, high)

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The range next_delay(attempt) falls in: what tests and operators can rely on."""
        if attempt < 1:
            raise ValueError("attempt counts from 1")
        try:
            ceiling = self.initial_delay * self.backoff ** min(attempt - 1, 1024)
        except OverflowError:
            ceiling = self.max_delay
        ceiling = min(ceiling, self.max_delay)
        return (ceiling / 2 if self.jitter else ceiling), ceiling
