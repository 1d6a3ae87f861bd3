"""Execution: the handle of one run, from ``.delay()`` or ``durable.get(id)``."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy.exc import InterfaceError, OperationalError

from celery_durable.engine import stream, wakeups
from celery_durable.engine.definition import GraphDefinition
from celery_durable.engine.flow_control import shown
from celery_durable.engine.operations import Operations
from celery_durable.engine.repairs import Repairs
from celery_durable.engine.runtime import Runtime
from celery_durable.engine.state import fit
from celery_durable.engine.versions import Upgrades
from celery_durable.errors import (
    Compensated,
    ExecutionCancelled,
    ExecutionFailed,
    NeedsIntervention,
    WaitTimeout,
)
from celery_durable.model.records import (
    AttemptRecord,
    Checkpoint,
    ErrorRecord,
    EventRecord,
    ExecutionRecord,
    Kind,
    error_record,
)
from celery_durable.persistence.stream_rows import Emitted
from celery_durable.status import ENDS_WAIT, FINISHED, Status

logger = logging.getLogger(__name__)

ENDINGS: dict[Status, type[ExecutionFailed]] = {
    Status.COMPENSATED: Compensated,
    Status.CANCELLED: ExecutionCancelled,
    Status.NEEDS_INTERVENTION: NeedsIntervention,
}


@dataclass(frozen=True, slots=True)
class Progress:
    done: int
    total: int
    current: list[str]
    percent: float
    eta: float | None
    status: Status
    children: int = 0
    children_done: int = 0

    def __str__(self) -> str:
        eta = f", eta {self.eta:.1f}s" if self.eta is not None else ""
        now = f" at {', '.join(self.current)}" if self.current else ""
        kids = f", children {self.children_done}/{self.children}" if self.children else ""
        return (
            f"{self.done}/{self.total} nodes ({self.percent:.0f}%){now}{eta}{kids} [{self.status}]"
        )


class Execution:
    """A run of a graph. Every property reads the database: it is always the committed truth."""

    def __init__(
        self,
        runtime: Runtime,
        execution_id: str,
        record: ExecutionRecord | None = None,
        tags: dict[str, str] | None = None,
    ):
        self.runtime = runtime
        self.id = execution_id
        self._record = record
        self._tags = tags
        self._operations = Operations(runtime)
        self._repairs = Repairs(runtime)

    def _graph(self, record: ExecutionRecord) -> GraphDefinition:
        """The run's version where this process defines it, else the newest (for its state
        model, which versions usually share)."""
        return self.runtime.graphs.at(
            record.graph, record.cursor.graph_version
        ) or self.runtime.graph(record.graph)

    def refresh(self) -> ExecutionRecord:
        self._record = self.runtime.store.get_execution(self.id)
        return self._record

    @property
    def record(self) -> ExecutionRecord:
        """The execution row as last read: what the CLI shows."""
        return self._record or self.refresh()

    @property
    def status(self) -> Status:
        return self.refresh().status

    @property
    def state(self) -> BaseModel:
        record = self.refresh()
        return fit(self._graph(record), record.state)[0]

    @property
    def version(self) -> str | None:
        """The version of its graph this run is pinned to (None: started before runs were
        pinned; it runs on the newest)."""
        return self.refresh().cursor.graph_version

    @property
    def error(self) -> ErrorRecord | None:
        return self.refresh().error

    @property
    def tags(self) -> dict[str, str]:
        """The string pairs the run was started with (or inherited from its parent), to find
        it by: ``durable.list(tags=...)``. Read once: a run's tags never change."""
        if self._tags is None:
            self._tags = self.runtime.store.tags_of([self.id]).get(self.id, {})
        return dict(self._tags)

    def wait(self, timeout: float | None = None) -> BaseModel:
        """Block until the run ends; returns the final state or raises ExecutionFailed.

        On PostgreSQL the final commit wakes the waiter (LISTEN/NOTIFY); on SQLite it polls,
        from every 2 ms backing off to every 250 ms.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        store = self.runtime.store
        with store.waiter(self.id) as waiter:
            pause = waiter.first_pause
            record = self.refresh()
            while record.status not in ENDS_WAIT:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise WaitTimeout(self.id, timeout or 0.0, record.status)
                notice = waiter.wait(pause if left is None else min(pause, left))
                pause = min(pause * 1.5, waiter.max_pause)
                # The end a notification carries is the answer unless it is older than the
                # row already read (an end before a retry, heard late): then look again.
                noticed = None if notice is None else store.noticed(notice)
                if noticed is not None and noticed.version > record.version:
                    record = self._record = noticed
                else:
                    try:
                        record = self.refresh()
                    except (OperationalError, InterfaceError) as exc:
                        # The database is away (a restart, a failover): look again at the
                        # next pause; the listener wakes this waiter when it reconnects.
                        logger.warning("waiting for %s: database unavailable (%s)", self.id, exc)
        if record.status != Status.SUCCEEDED:
            error = record.error or error_record(str(record.status), "run did not succeed")
            raise ENDINGS.get(record.status, ExecutionFailed)(self.id, error.get("node"), error)
        return fit(self._graph(record), record.state)[0]

    def history(self) -> list[Checkpoint]:
        """Every checkpoint, oldest first: the start, node visits, steps, failures (of a graph
        with ``keep_checkpoints``, those it keeps). One whose row no longer matches its
        checksum is marked ``corrupted`` and the rest still show."""
        return self.runtime.store.list(self.id, contain=True)

    def stream(
        self, after: int | Checkpoint | Emitted | None = None, timeout: float | None = None
    ) -> Iterator[Checkpoint | Emitted]:
        """Yield the run's checkpoints as they commit, and the values its nodes publish with
        ``ctx.emit()`` (``Emitted``) between them, in the order the run made them, none
        missed; the iterator ends after the checkpoint that leaves the run finished or
        needing an operator (where ``wait()`` returns).

        ``after``: where to begin. None, the whole run from its start checkpoint (a run
        already over yields its history and ends); an item this stream yielded, just past
        it; a seq, past that checkpoint (values emitted after it come again). ``timeout``:
        seconds for the whole stream, then WaitTimeout; the run goes on, and
        ``stream(after=last_item)`` picks up there.

        On PostgreSQL a commit of a streamed run notifies the stream; on SQLite it polls,
        from every 2 ms backing off to every 250 ms while nothing happens.
        """
        return stream.stream_run(self.runtime, self.id, after, timeout)

    def attempts(self) -> list[AttemptRecord]:
        """Every failed attempt of the run's nodes and compensations, with its error, in the
        order they failed: the retries behind each visit that ``history()`` shows once."""
        return self.runtime.visits.failures(self.id)

    def progress(self) -> Progress:
        """Done and total nodes, the node(s) due now, percent, and an ETA from mean node time."""
        record = self.refresh()
        nodes = self.runtime.store.list(self.id, kinds=[Kind.START, Kind.NODE], contain=True)
        done_names = {cp.node for cp in nodes if cp.kind == Kind.NODE}
        graph = self.runtime.graphs.at(record.graph, record.cursor.graph_version)
        current = [name for name, _ in record.cursor.frontier]
        if graph is not None and graph.keep_checkpoints is not None:
            # Compacted visits count too: a node made ready more often than it is due now.
            visits = record.cursor.visits
            done_names |= {name for name in visits if visits[name] > current.count(name)}
        if record.status == Status.SUCCEEDED or graph is None:
            total = len(done_names) + len(set(current) - done_names)
        else:
            total = len(graph.nodes)
        done = len(done_names)
        percent = 100.0 if record.status == Status.SUCCEEDED else 100.0 * done / max(total, 1)
        eta = None
        committed = len(nodes) - 1
        if committed > 0 and not record.status.finished:
            mean = (nodes[-1].created_at - nodes[0].created_at).total_seconds() / committed
            eta = mean * max(total - done, 0)
        store = self.runtime.store
        children = store.count_children(self.id, "", Status)
        done_children = store.count_children(self.id, "", FINISHED) if children else 0
        return Progress(done, total, current, percent, eta, record.status, children, done_children)

    # -- control operations: each appends an audited checkpoint, or raises and changes nothing

    def pause(self, *, by: str | None = None, reason: str | None = None) -> None:
        """The running node commits; nothing new is dispatched until resume()."""
        self._operations.pause(self.id, by=by, reason=reason)

    def resume(
        self,
        update: dict[str, Any] | None = None,
        *,
        by: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Continue a paused run, or approve the interrupt the run waits at: ``update``
        (validated by the state model, refused changing nothing) is applied as it goes on."""
        self._operations.resume(self.id, update, by=by, reason=reason)

    def send_event(
        self,
        name: str,
        payload: Any = None,
        idempotency_key: str | None = None,
        *,
        by: str | None = None,
        reason: str | None = None,
    ) -> EventRecord:
        """Send an event: the run's next ``ctx.wait_for_event(name)`` gets ``payload``. Kept
        until consumed; the same ``idempotency_key`` twice stores one event. Kept with who
        sent it and why, like every operation."""
        return wakeups.send_event(
            self.runtime, self.id, name, payload, idempotency_key, by=by, reason=reason
        )

    def children(self) -> list[Execution]:
        """The runs this one started as children (ctx.start_child, ctx.map), in id order."""
        return [Execution(self.runtime, r.id, r) for r in self.runtime.store.children(self.id)]

    @property
    def waiting_on(self) -> dict[str, Any] | None:
        """What the run waits for (``kind``: sleep, event or interrupt; ``node``; ``until``,
        ``event`` or ``when``), or None."""
        record = self.refresh()
        if record.status.finished:
            return None
        open_waits = record.cursor.waits.values()
        return next((wait.public() for wait in open_waits), None)

    @property
    def held_back(self) -> dict[str, str]:
        """Node visits flow control holds back ("node:visit"), and by what: "breaker
        payments", "rate stripe", "slot <key>" (in line for a concurrency key's place)."""
        held = {
            f"{node}:{visit}": shown(by)
            for (node, visit), by in self.runtime.visits.held(self.id).items()
        }
        _, queued = self.runtime.flow.slots.holders(self.id)
        for holder in queued:
            held[f"{holder.node}:{holder.visit}"] = f"slot {holder.key}"
        return held

    def cancel(self, *, by: str | None = None, reason: str | None = None) -> None:
        """Stop for good: nothing new is dispatched and the tasks in flight are revoked."""
        self._operations.cancel(self.id, by=by, reason=reason)

    def retry(self, *, by: str | None = None, reason: str | None = None) -> None:
        """Run a failed execution again from its failure point, with fresh attempts; or resume
        a compensation that needs intervention where it stopped."""
        self._operations.retry(self.id, by=by, reason=reason)

    def upgrade(
        self, version: str | None = None, *, by: str | None = None, reason: str | None = None
    ) -> str:
        """Move this run onto ``version`` of its graph (default: the newest defined here);
        returns it. Audited; refused while a node of the run is running or when it is at a
        node the target does not have. Its children keep their own versions."""
        return Upgrades(self.runtime).upgrade(self.id, version, by=by, reason=reason)

    def restart_from(
        self, checkpoint: Checkpoint | int, *, by: str | None = None, reason: str | None = None
    ) -> None:
        """Time travel: continue this execution from an earlier checkpoint; history is kept."""
        self._repairs.restart_from(self.id, _seq(checkpoint), by=by, reason=reason)

    def fork(
        self,
        checkpoint: Checkpoint | int,
        *,
        execution_id: str | None = None,
        by: str | None = None,
        reason: str | None = None,
    ) -> Execution:
        """A new execution that starts from a checkpoint of this one, with its tags."""
        new_id = self._repairs.fork(
            self.id, _seq(checkpoint), new_id=execution_id, by=by, reason=reason
        )
        return Execution(self.runtime, new_id)

    def skip(
        self,
        node: str,
        output: dict[str, Any] | None = None,
        *,
        by: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Mark the failed node done with ``output``, or a stuck compensation done by hand."""
        self._repairs.skip(self.id, node, output, by=by, reason=reason)

    def update_state(
        self, patch: dict[str, Any], *, by: str | None = None, reason: str | None = None
    ) -> None:
        """Fix the state by hand; validated by the state model."""
        self._operations.update_state(self.id, patch, by=by, reason=reason)

    def compensate(self, reason: str | None = None, *, by: str | None = None) -> None:
        """Undo a running, failed or succeeded saga's completed steps, newest first."""
        self._operations.compensate(self.id, by=by, reason=reason)

    def __repr__(self) -> str:
        status = self._record.status if self._record else "?"
        return f"<Execution {self.id} {status}>"


def _seq(checkpoint: Checkpoint | int) -> int:
    return checkpoint if isinstance(checkpoint, int) else checkpoint.seq
