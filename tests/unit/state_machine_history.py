"""What a run's history explains, worked out from the checkpoints alone: the state they fold
to and the status they replay to. The state machine holds every run's row to these."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery_durable import Status
from celery_durable.model.cursor import Cursor
from celery_durable.model.records import Checkpoint, Kind

S = Status


def folded(history: list[Checkpoint], reduced: set[str], where: str) -> dict[str, Any]:
    """The state the history makes, checking each checkpoint that records one on the way."""
    state: dict[str, Any] = {}
    at: dict[int, dict[str, Any]] = {}
    for cp in history:
        if cp.kind == Kind.START:
            state = dict(cp.state or {})
        elif cp.kind == Kind.NODE:
            output = cp.output or {}
            merged = {k: state[k] + v if k in reduced else v for k, v in output.items()}
            expected = {**state, **merged}
            assert cp.state == expected, f"node {cp.node}:{cp.visit} is not its output: {where}"
            state = expected
        elif op(cp) == "restart":
            expected = at[(cp.meta or {})["from_seq"]]
            assert cp.state == expected, f"restart {cp.seq} is not the state it names: {where}"
            state = expected
        elif cp.state is not None:
            assert cp.state == state, f"{cp.kind} {cp.seq} changed the state: {where}"
        at[cp.seq] = state
    return state


def replayed(history: list[Checkpoint], *, saga: bool) -> Status:
    """The status the history explains: each checkpoint moves it from the one before."""
    status = S.PENDING
    for cp in history:
        status = _after(cp, status, saga)
    return status


def _after(cp: Checkpoint, before: Status, saga: bool) -> Status:
    c = cp.cursor
    kind, operation = cp.kind, op(cp)
    if kind == Kind.NODE and before == S.COMPENSATING:
        # A step in flight when undoing began committed: it joins the undo list, or ends
        # the undoing if it has no compensation and nothing else is left.
        return _undoing(c)
    if kind in (Kind.START, Kind.NODE, Kind.WAIT, Kind.WAKE):
        settled = c.settled()
        # Paused, a node that ends the run ends it; anything else waits for resume().
        if before == S.PAUSED and (kind != Kind.NODE or settled in (S.RUNNING, S.WAITING)):
            return S.PAUSED
        return settled
    if kind == Kind.STEP:
        return before
    if kind == Kind.FAILURE:
        return _undoing(c) if saga else S.FAILED
    if kind == Kind.COMPENSATION or operation == "compensate":
        return _undoing(c)
    if kind == Kind.INTERVENTION:
        return S.NEEDS_INTERVENTION
    ops: dict[str | None, Callable[[Cursor], Status]] = {
        "pause": lambda _: S.PAUSED,
        "cancel": lambda _: S.CANCELLED,
        "resume": Cursor.settled,
        "restart": Cursor.settled,
        "retry": lambda cursor: _undoing(cursor) if cursor.undo else cursor.settled(),
    }
    assert operation in ops, f"checkpoint {cp.seq} ({kind}, op {operation}) explains no status"
    return ops[operation](c)


def _undoing(cursor: Cursor) -> Status:
    return S.COMPENSATING if cursor.frontier or cursor.undo else S.COMPENSATED


def op(cp: Checkpoint) -> str | None:
    """The operation a manual checkpoint records."""
    return (cp.meta or {}).get("op") if cp.kind == Kind.MANUAL else None


def listing(history: list[Checkpoint]) -> str:
    """A history in one line, for assertion messages."""
    return ", ".join(_entry(cp) for cp in history)


def _entry(cp: Checkpoint) -> str:
    operation = op(cp)
    suffix = f"/{operation}" if operation else ""
    return f"{cp.seq}:{cp.kind}{suffix}:{cp.node}:{cp.visit}"
