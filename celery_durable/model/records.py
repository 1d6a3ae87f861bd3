"""What the store hands out and takes in: frozen values, apart from the tables' behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

from celery_durable.model.cursor import Cursor
from celery_durable.status import Status


class Kind(StrEnum):
    """What a checkpoint records. Node and compensation visits are also the kinds of the
    visit ledger's rows (attempts, leases, due retries)."""

    START = "start"
    NODE = "node"
    STEP = "step"
    FAILURE = "failure"
    COMPENSATION = "compensation"
    INTERVENTION = "intervention"
    MANUAL = "manual"
    # A node visit began waiting (its function asked to, or an interrupt), and what woke it.
    WAIT = "wait"
    WAKE = "wake"
    # Not a checkpoint: a visit-ledger row for a node visit held back by flow control.
    HOLD = "hold"


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerRow:
    """A circuit breaker as stored; saga/flow.py decides how it changes."""

    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    window_started_at: datetime | None = None
    opened_at: datetime | None = None
    probe_until: datetime | None = None


class ErrorRecord(TypedDict):
    """An error as stored on the execution and shown to operators."""

    type: str
    message: str
    node: NotRequired[str | None]
    attempt: NotRequired[int]
    traceback: NotRequired[str]
    # A compensation that failed for good keeps the error that started compensating.
    compensating: NotRequired[bool]
    original: NotRequired[ErrorRecord | None]


def error_record(type_: str, message: str, node: str | None = None) -> ErrorRecord:
    """An error the engine itself records (not an exception a node raised)."""
    return {"type": type_, "message": message, "node": node}


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; everything here is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One committed fact of an execution: a node visit, a compensation, a manual change."""

    execution_id: str
    seq: int
    kind: Kind
    node: str
    visit: int
    # None for a step, a wait or a wake: they do not change the state (rows.STATELESS).
    state: dict[str, Any] | None
    cursor: Cursor
    output: Any
    meta: dict[str, Any] | None
    checksum: str
    created_at: datetime
    # Read for display only, its row did not match its checksum: its contents are withheld.
    corrupted: bool = False


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    """An execution row as last committed."""

    id: str
    graph: str
    fingerprint: str
    status: Status
    version: int
    state: dict[str, Any]
    cursor: Cursor
    error: ErrorRecord | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    swept_at: datetime | None = None
    # The run whose node started this one (ctx.start_child, ctx.map), if any.
    parent_id: str | None = None


@dataclass(frozen=True, slots=True)
class Commit:
    """A checkpoint and the execution advance it implies, written in one transaction.

    The checkpoint's seq is ``expected_version + 1``: the version the execution moves to.
    ``lease_token`` above 0 fences the write: it fails if a newer attempt took the lease.
    """

    execution_id: str
    expected_version: int
    kind: Kind
    node: str
    visit: int
    state: dict[str, Any]
    cursor: Cursor
    status: Status
    output: Any = None
    meta: dict[str, Any] | None = None
    error: ErrorRecord | None = None
    lease_token: int = 0
    # ``state`` already in canonical JSON, when the caller made it (saves a second dump).
    state_json: str | None = None

    @property
    def seq(self) -> int:
        return self.expected_version + 1


@dataclass(frozen=True, slots=True)
class VisitRecord:
    """Attempts, redeliveries, lease and due time of one node visit (only off the happy path)."""

    execution_id: str
    kind: Kind
    node: str
    visit: int
    attempts: int
    redeliveries: int
    lease_token: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    due_at: datetime | None
    last_error: dict[str, Any] | None
    waiting_for: str | None = None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One failed attempt of a node or compensation visit: attempt ``attempt`` (counted in
    the database) failed at ``failed_at`` with ``error``."""

    execution_id: str
    kind: Kind
    node: str
    visit: int
    attempt: int
    error: dict[str, Any]
    failed_at: datetime


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event sent to a run, kept until a wait consumes it (consumption is recorded by the
    wait's wake checkpoint, so it commits with the run's advance)."""

    id: int
    execution_id: str
    name: str
    payload: Any
    idempotency_key: str | None
    created_at: datetime
    # Who sent it, and why (None for events sent before revision 0007).
    sent_by: str | None = None
    reason: str | None = None
