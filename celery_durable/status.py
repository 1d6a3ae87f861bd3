"""Execution statuses, and which of them are final."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Where an execution stands; see FINISHED for the ones that never change again."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    CANCELLED = "cancelled"
    NEEDS_INTERVENTION = "needs_intervention"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({Status.SUCCEEDED, Status.FAILED, Status.COMPENSATED, Status.CANCELLED})

# The statuses Execution.wait() returns on: finished, or stuck until an operator acts.
ENDS_WAIT = FINISHED | {Status.NEEDS_INTERVENTION}

# Work is in flight: a node or a compensation may be running or due.
ACTIVE = frozenset({Status.RUNNING, Status.COMPENSATING})

# A node attempt already in flight may still commit (a pause holds only what comes next), and
# a retry that falls due is dispatched.
LIVE = ACTIVE | {Status.PAUSED}
