"""Streams: a run's checkpoints as they commit, and the values its nodes emit between them.

``run.stream()`` follows one run from a position to its end; ``stream_runs`` (what
``durable.stream()`` returns) follows the runs of some graphs from now on. Both look at the
database when woken (PostgreSQL: a notification that a run they follow committed or
emitted; SQLite: a pause that shortens while things happen) and yield what lies past each
run's position, in the order the run placed it: nothing is skipped, so a stream resumed
``after=`` the last item it yielded goes on exactly there.

Emitted values are kept with their run (a small table, pruned with it) rather than only
sent: a reader that connects late, or resumes, sees what a node said, and SQLite, which has
no notifications, streams them the same way. They are never checkpoints: history, time
travel and forks do not see them.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Collection, Iterable, Iterator
from typing import Any

from pydantic import BaseModel
from sqlalchemy.exc import InterfaceError, OperationalError

from celery_durable.engine.runtime import Runtime
from celery_durable.errors import ExecutionNotFound, PayloadTooLarge, WaitTimeout
from celery_durable.model.records import Checkpoint, Kind, utcnow
from celery_durable.persistence import codec
from celery_durable.persistence.stream_rows import (
    EVERY_RUN,
    EmitRow,
    Emitted,
    graph_key,
    run_key,
)
from celery_durable.persistence.stream_store import (
    Position,
    RunMark,
    StreamStore,
)
from celery_durable.status import ENDS_WAIT, FINISHED, Status

logger = logging.getLogger(__name__)

StreamItem = Checkpoint | Emitted
# Before the start checkpoint (seq 0): a stream from here yields the whole run.
BEGINNING: Position = (-1, 0)


def position(item: StreamItem) -> Position:
    """Where an item lies in its run: a checkpoint at (seq, 0), a value at (seq, index)."""
    return (item.seq, item.index) if isinstance(item, Emitted) else (item.seq, 0)


def stream_run(
    runtime: Runtime,
    execution_id: str,
    after: int | StreamItem | None = None,
    timeout: float | None = None,
) -> Iterator[StreamItem]:
    """What ``Execution.stream`` yields: the run's checkpoints and emitted values past
    ``after`` (a checkpoint's seq, or an item yielded before) until it ends."""
    start = BEGINNING if after is None else _after(after)
    streams = _streams(runtime)
    deadline = None if timeout is None else time.monotonic() + timeout
    follower = Follower(streams, {execution_id: start})
    with streams.watch([run_key(execution_id)]) as waiter:
        pause = waiter.first_pause
        while True:
            look = follower.look([execution_id])
            if look is not None:
                if execution_id in look.gone:
                    raise ExecutionNotFound(execution_id)
                yield from look.items
                if look.ended:
                    return
                if look.items or look.more:
                    pause = waiter.first_pause
                if look.more:
                    continue
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                mark = follower.marks.get(execution_id)
                raise WaitTimeout(execution_id, timeout or 0.0, mark.status if mark else "?")
            waiter.wait(pause if left is None else min(pause, left))
            pause = min(pause * 1.5, waiter.max_pause)


def stream_runs(
    runtime: Runtime,
    graphs: str | Collection[str] | None = None,
    statuses: Status | str | Iterable[Status | str] | None = None,
    timeout: float | None = None,
) -> Iterator[StreamItem]:
    """What ``durable.stream()`` yields: from now on, the checkpoints and emitted values of
    the runs of ``graphs`` (None: every graph) that are in ``statuses`` (None: any but
    finished) when it starts, and of the runs started after it, each until its end; runs
    interleaved as they committed, each in its own order. Returns after ``timeout``
    seconds (None: never)."""
    graphs = [graphs] if isinstance(graphs, str) else graphs
    statuses = [statuses] if isinstance(statuses, str) else statuses
    keys = [EVERY_RUN] if graphs is None else [graph_key(g) for g in graphs]
    wanted = set(Status) - FINISHED if statuses is None else {Status(s) for s in statuses}
    streams = _streams(runtime)
    deadline = None if timeout is None else time.monotonic() + timeout
    started = utcnow()
    with streams.watch(keys) as waiter:
        follower = Follower(streams, streams.positions(graphs, wanted))
        # Every run ever followed or found not to be: only a new one is looked up.
        known = set(follower.positions)
        pause, noticed = waiter.first_pause, None
        while True:
            if noticed is None:
                new = streams.started_since(graphs, started) - known
                targets = set(follower.positions) | new
            else:
                unknown = noticed - known
                marks = streams.marks(unknown) if unknown else {}
                new = {i for i, mark in marks.items() if mark.created_at >= started}
                known |= unknown
                targets = (noticed & set(follower.positions)) | new
            known |= new
            for execution_id in new:
                follower.follow(execution_id, BEGINNING)
            look = follower.look(targets) if targets else None
            if look is not None:
                yield from look.items
                if look.items or look.more:
                    pause = waiter.first_pause
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            if look is not None and look.more:
                noticed = set(look.moving)
                continue
            noticed = waiter.wait(pause if left is None else min(pause, left))
            pause = min(pause * 1.5, waiter.max_pause)


class Look:
    """What one look found: items in order, and which runs ended, vanished or have more."""

    __slots__ = ("ended", "gone", "items", "moving")

    def __init__(self) -> None:
        self.items: list[StreamItem] = []
        self.ended: set[str] = set()
        self.gone: set[str] = set()
        # Runs with more to read at once: commits landed past what was read, or a page was full.
        self.moving: set[str] = set()

    @property
    def more(self) -> bool:
        return bool(self.moving)


class Follower:
    """The runs a stream follows, each at the position of the last item it yielded."""

    def __init__(self, streams: StreamStore, positions: dict[str, Position]) -> None:
        self.streams = streams
        self.positions = dict(positions)
        self.marks: dict[str, RunMark] = {}

    def follow(self, execution_id: str, at: Position) -> None:
        self.positions[execution_id] = at

    def look(self, ids: Iterable[str]) -> Look | None:
        """Read past the positions of ``ids`` (StreamStore.look) and move them past what is
        yielded; None when the database is away: look again later."""
        after = {i: self.positions[i] for i in ids if i in self.positions}
        try:
            return self._look(after)
        except (OperationalError, InterfaceError) as exc:
            logger.warning("streaming: database unavailable (%s); looking again", exc)
            return None

    def _look(self, after: dict[str, Position]) -> Look:
        found, look = self.streams.look(after), Look()
        self.marks.update(found.marks)
        by_run: dict[str, list[StreamItem]] = {}
        read: list[StreamItem] = [*found.checkpoints, *found.values]
        for item in sorted(read, key=lambda i: (i.execution_id, position(i))):
            bound = found.bounds.get(item.execution_id)
            if bound is None or position(item) <= bound:
                by_run.setdefault(item.execution_id, []).append(item)
        look.items = list(heapq.merge(*by_run.values(), key=lambda i: i.created_at))
        for item in look.items:
            self.positions[item.execution_id] = position(item)
        for execution_id in after:
            mark = found.marks.get(execution_id)
            if mark is None:
                look.gone.add(execution_id)
                del self.positions[execution_id]
                continue
            seq = self.positions[execution_id][0]
            if mark.version > seq or execution_id in found.bounds:
                look.moving.add(execution_id)
            elif mark.status in ENDS_WAIT:
                look.ended.add(execution_id)
                del self.positions[execution_id]
        return look


class Emitter:
    """What ``ctx.emit()`` publishes through: one attempt of one visit, to its run's
    streams."""

    def __init__(
        self,
        runtime: Runtime,
        kind: Kind,
        execution_id: str,
        node: str,
        visit: int,
        attempt: int,
    ) -> None:
        self.runtime = runtime
        self.kind = kind
        self.execution_id = execution_id
        self.node = node
        self.visit = visit
        self.attempt = attempt

    def emit(self, data: Any) -> None:
        """Store ``data`` after the run's current checkpoint, and wake who streams the run."""
        value = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
        text = codec.dumps(value, "An emitted value")
        size, limit = len(text.encode()), self.runtime.settings.max_state_bytes
        if size > limit:
            raise PayloadTooLarge("An emitted value", size, limit)
        store = self.runtime.store
        row = EmitRow(
            execution_id=self.execution_id,
            kind=str(self.kind),
            node=self.node,
            visit=self.visit,
            attempt=self.attempt,
            data=store.sealer.seal(text, self.execution_id),
            now=utcnow(),
        )
        if not _streams(self.runtime).emit(row):
            raise ExecutionNotFound(self.execution_id)


def _after(after: int | StreamItem) -> Position:
    """Past a checkpoint's seq (and before the values emitted after it), or past an item."""
    return (after, 0) if isinstance(after, int) else position(after)


def _streams(runtime: Runtime) -> StreamStore:
    return StreamStore(runtime.store.db, runtime.store.sealer)
