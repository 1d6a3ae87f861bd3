"""Circuit breakers, apart from where their state lives: the closed → open → half-open cycle.

Each function takes the stored row and the time, and returns what to do and the row to write
(None when nothing changes), so that the store can apply it under one row lock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from celery_durable.errors import InvalidFlowOption
from celery_durable.model.records import BreakerRow, BreakerState


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """``failure_threshold`` failures within ``window`` seconds open the breaker; after
    ``reset_after`` seconds one probe goes through, and its outcome closes or reopens it."""

    name: str
    failure_threshold: int = 5
    window: float = 60.0
    reset_after: float = 30.0

    def __post_init__(self) -> None:
        if not self.name or self.failure_threshold < 1 or self.window <= 0 or self.reset_after <= 0:
            raise InvalidFlowOption(
                f"breaker {self.name!r}",
                "needs a name, failure_threshold of at least 1, window and reset_after in "
                "seconds greater than 0",
            )


@dataclass(frozen=True, slots=True)
class Admission:
    """Go (``probe`` when this call decides a half-open breaker), or come back at ``retry_at``."""

    retry_at: datetime | None = None
    probe: bool = False

    @property
    def allowed(self) -> bool:
        return self.retry_at is None


# A rejected call looks again after at most this long while a probe is out.
PROBE_RECHECK = 1.0


def admit(
    policy: BreakerPolicy, row: BreakerRow, now: datetime, probe_ttl: float
) -> tuple[Admission, BreakerRow | None]:
    """May a call go through now?"""
    if row.state == BreakerState.CLOSED:
        return Admission(), None
    if row.state == BreakerState.OPEN:
        assert row.opened_at is not None
        reopen_at = row.opened_at + timedelta(seconds=policy.reset_after)
        if now < reopen_at:
            return Admission(retry_at=reopen_at), None
    elif row.probe_until is not None and row.probe_until > now:
        recheck = now + timedelta(seconds=min(policy.reset_after, PROBE_RECHECK))
        return Admission(retry_at=min(recheck, row.probe_until)), None
    # Open long enough, or a probe that never reported (its worker died): send one probe.
    probe_until = now + timedelta(seconds=probe_ttl)
    return Admission(probe=True), replace(
        row, state=BreakerState.HALF_OPEN, probe_until=probe_until
    )


def record(
    policy: BreakerPolicy, row: BreakerRow, ok: bool, now: datetime, probe: bool
) -> BreakerRow | None:
    """A call that went through ended, well or not."""
    if ok:
        if probe or row.state == BreakerState.HALF_OPEN:
            return BreakerRow()
        return None
    if probe or row.state == BreakerState.HALF_OPEN:
        return BreakerRow(BreakerState.OPEN, row.failures + 1, row.window_started_at, now)
    if row.state == BreakerState.OPEN:
        return None  # a call let through before it opened
    start = row.window_started_at
    if start is None or now - start > timedelta(seconds=policy.window):
        row = BreakerRow(failures=0, window_started_at=now)
    failures = row.failures + 1
    if failures >= policy.failure_threshold:
        return BreakerRow(BreakerState.OPEN, failures, row.window_started_at, now)
    return replace(row, failures=failures)
