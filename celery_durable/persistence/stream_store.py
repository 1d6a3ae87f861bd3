"""What streams read and ``ctx.emit()`` writes, on either database.

A stream follows runs by position: ``(seq, 0)`` is checkpoint ``seq``, ``(seq, n)`` the n-th
value emitted after it. Each read takes what lies past the positions it is given, for many
runs at once (one statement per table and per ``CHUNK`` runs), so one look costs the same
three statements for one run or a hundred.
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    CompoundSelect,
    Integer,
    Row,
    Select,
    Text,
    and_,
    bindparam,
    cast,
    literal_column,
    null,
    or_,
    select,
    union_all,
)

from celery_durable.model.records import Checkpoint, Kind, as_utc
from celery_durable.persistence import codec
from celery_durable.persistence.database import Database
from celery_durable.persistence.dialect import Engines
from celery_durable.persistence.postgres import PostgresDialect
from celery_durable.persistence.rows import checkpoint_record
from celery_durable.persistence.schema import checkpoints, executions
from celery_durable.persistence.sealing import Sealer
from celery_durable.persistence.sqlite import SQLiteDialect
from celery_durable.persistence.stream_rows import EmitRow, Emitted, emits
from celery_durable.status import Status

Position = tuple[int, int]
# Past any value placed after a checkpoint: (seq, UNBOUNDED) is the end of checkpoint seq's.
UNBOUNDED = 2**62
# Runs per statement: 5 parameters a run, under the 999 of older SQLite builds.
CHUNK = 100
# Checkpoints, and values, per statement: a long history comes in a few looks.
PAGE = 1000
# What a row of a look is.
CHECKPOINT, VALUE, MARK = "checkpoint", "value", "mark"


class StreamWaiter(Protocol):
    """What a stream waits on between two looks."""

    first_pause: float
    max_pause: float

    def wait(self, timeout: float) -> set[str] | None:
        """Return within ``timeout`` seconds: the runs notified meanwhile (empty: none), or
        None: look at every run followed."""

    def close(self) -> None:
        """Stop being woken."""


@dataclass(frozen=True, slots=True)
class RunMark:
    """Where a run stands, as a stream needs it: to end, or to know it is new."""

    status: Status
    version: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Found:
    """What a look read. ``bounds``: how far a run may be streamed now (a page was full)."""

    checkpoints: list[Checkpoint]
    values: list[Emitted]
    marks: dict[str, RunMark]
    bounds: dict[str, Position]


class StreamStore:
    """Emitted values written and read, checkpoints read past positions, streams woken."""

    def __init__(self, db: Database, sealer: Sealer) -> None:
        self.db = db
        self.sealer = sealer

    def emit(self, row: EmitRow) -> bool:
        """Place a value after the run's current checkpoint; False when there is no run."""
        return _dialect(self.db).emit(self.db.engines, row)

    @contextmanager
    def watch(self, keys: Iterable[str]) -> Iterator[StreamWaiter]:
        """Something to wait on until a run ``keys`` name commits or emits: on PostgreSQL
        the notification of it (commits of these runs notify while the block runs); on
        SQLite a pause, after which everything is looked at."""
        waiter = _dialect(self.db).stream_waiter(self.db.engines, keys)
        try:
            yield waiter
        finally:
            waiter.close()

    def look(self, after: Mapping[str, Position]) -> Found:
        """The checkpoints and values past each run's position, and where each run stands:
        one statement per CHUNK runs, so one snapshot, in which a value placed after
        checkpoint ``s`` is never seen without ``s`` (stream_rows.py). At most PAGE
        checkpoints and PAGE values per statement: past a full page, ``bounds`` says how far
        each run of it may be streamed now; the rest comes with the next look."""
        found = Found([], [], {}, {})
        for chunk in _chunks(after):
            with self.db.read() as conn:
                rows = conn.execute(_look(len(chunk)), _parameters(chunk, after)).all()
            self._take(rows, chunk, after, found)
        return found

    def _take(
        self,
        rows: Sequence[Row[Any]],
        chunk: list[str],
        after: Mapping[str, Position],
        found: Found,
    ) -> None:
        read: dict[str, list[Row[Any]]] = {CHECKPOINT: [], VALUE: [], MARK: []}
        for row in rows:
            read[row.what].append(row)
        for row in read[MARK]:
            mark = RunMark(Status(row.kind), row.seq, _utc(row.created_at))
            found.marks[row.execution_id] = mark
        found.checkpoints.extend(
            checkpoint_record(row, self.sealer, contain=True) for row in read[CHECKPOINT]
        )
        found.values.extend(self._emitted(row) for row in read[VALUE])
        # A checkpoint page cut short: values after the last checkpoint read may go, not
        # past the next one; a value page: nothing past the last value read.
        _bound(
            found.bounds,
            read[CHECKPOINT],
            chunk,
            lambda row: (row.seq, UNBOUNDED),
            lambda execution_id: (after[execution_id][0], UNBOUNDED),
        )
        _bound(
            found.bounds,
            read[VALUE],
            chunk,
            lambda row: (row.seq, row.n),
            lambda execution_id: after[execution_id],
        )

    def _emitted(self, row: Row[Any]) -> Emitted:
        execution_id = row.execution_id
        return Emitted(
            execution_id=execution_id,
            seq=row.seq,
            index=row.n,
            kind=Kind(row.kind),
            node=row.node,
            visit=row.visit,
            attempt=row.attempt,
            data=codec.loads(self.sealer.open(row.state, execution_id)),
            created_at=_utc(row.created_at),
        )

    def marks(self, ids: Collection[str]) -> dict[str, RunMark]:
        """Status, version and start of each run that exists."""
        x = executions.c
        marks: dict[str, RunMark] = {}
        for chunk in _chunks(ids):
            query = select(x.id, x.status, x.version, x.created_at).where(x.id.in_(chunk))
            with self.db.read() as conn:
                for row in conn.execute(query):
                    marks[row.id] = RunMark(Status(row.status), row.version, _utc(row.created_at))
        return marks

    def positions(
        self, graphs: Collection[str] | None, statuses: Collection[Status]
    ) -> dict[str, Position]:
        """The runs of ``graphs`` (None: every graph) in ``statuses``, each at its newest
        checkpoint and value: where a stream that follows them from now on starts."""
        x, e = executions.c, emits.c
        emitted = (
            select(emits.c.n)
            .where(e.execution_id == x.id, e.after_seq == x.version)
            .order_by(e.n.desc())
            .limit(1)
            .scalar_subquery()
        )
        query = select(x.id, x.version, emitted.label("emitted")).where(
            x.status.in_([str(s) for s in statuses])
        )
        if graphs is not None:
            query = query.where(x.graph.in_(builtins.list(graphs)))
        with self.db.read() as conn:
            return {row.id: (row.version, row.emitted or 0) for row in conn.execute(query)}

    def started_since(self, graphs: Collection[str] | None, since: datetime) -> set[str]:
        """The runs of ``graphs`` (None: every graph) started at ``since`` or later."""
        x = executions.c
        query = select(x.id).where(x.created_at >= since)
        if graphs is not None:
            query = query.where(x.graph.in_(builtins.list(graphs)))
        with self.db.read() as conn:
            return set(conn.execute(query).scalars())


class _Streams(Protocol):
    def emit(self, engines: Engines, row: EmitRow) -> bool: ...

    def stream_waiter(self, engines: Engines, keys: Iterable[str]) -> Any: ...


def _dialect(db: Database) -> _Streams:
    """The database's stream operations (postgres.py, sqlite.py)."""
    dialect = db.dialect
    if not isinstance(dialect, PostgresDialect | SQLiteDialect):
        raise TypeError(f"no streams on {type(dialect).__name__}")
    return dialect


def _chunks(ids: Iterable[str]) -> Iterator[builtins.list[str]]:
    listed = builtins.list(ids)
    for start in range(0, len(listed), CHUNK):
        yield listed[start : start + CHUNK]


@functools.cache
def _look(runs: int) -> CompoundSelect[Any]:
    """For ``runs`` runs (parameters ``id<k>``, ``seq<k>``, ``n<k>``): checkpoints past each
    run's seq, values past its position, and its row, as rows of one shape (ROW), a value's
    data in ``state``, a row's status in ``kind``. Built once per number of runs: building
    costs more than running it."""
    c, e, x = checkpoints.c, emits.c, executions.c
    text, integer = cast(null(), Text), cast(null(), Integer)
    zero: Any = literal_column("0")
    ids: list[Any] = [bindparam(f"id{k}") for k in range(runs)]
    seqs: list[Any] = [bindparam(f"seq{k}") for k in range(runs)]
    indexes: list[Any] = [bindparam(f"n{k}") for k in range(runs)]
    passed = _shaped(
        CHECKPOINT, c.execution_id, c.seq, zero, c.kind, c.node, c.visit, integer, c.state,
        c.cursor, c.output, c.meta, c.checksum, c.created_at,
    )  # fmt: skip
    passed = passed.where(
        or_(*(and_(c.execution_id == i, c.seq > s) for i, s in zip(ids, seqs, strict=True)))
    )
    after = (
        and_(e.execution_id == i, or_(e.after_seq > s, and_(e.after_seq == s, e.n > n)))
        for i, s, n in zip(ids, seqs, indexes, strict=True)
    )
    placed = _shaped(
        VALUE, e.execution_id, e.after_seq, e.n, e.kind, e.node, e.visit, e.attempt, e.data,
        text, text, text, text, e.created_at,
    ).where(or_(*after))  # fmt: skip
    stands = _shaped(
        MARK, x.id, x.version, zero, x.status, literal_column("''"), zero, integer, text, text,
        text, text, text, x.created_at,
    ).where(x.id.in_(ids))  # fmt: skip
    return union_all(
        select(passed.order_by(c.execution_id, c.seq).limit(PAGE).subquery()),
        select(placed.order_by(e.execution_id, e.after_seq, e.n).limit(PAGE).subquery()),
        select(stands.subquery()),
    )  # fmt: skip


def _parameters(chunk: list[str], after: Mapping[str, Position]) -> dict[str, Any]:
    parameters: dict[str, Any] = {}
    for k, execution_id in enumerate(chunk):
        parameters[f"id{k}"] = execution_id
        parameters[f"seq{k}"], parameters[f"n{k}"] = after[execution_id]
    return parameters


ROW = (
    "what", "execution_id", "seq", "n", "kind", "node", "visit", "attempt", "state", "cursor",
    "output", "meta", "checksum", "created_at",
)  # fmt: skip


def _shaped(what: str, *columns: Any) -> Select[Any]:
    """A select of ``columns`` named as ROW, ``what`` first."""
    named = [literal_column(f"'{what}'"), *columns]
    return select(*(column.label(name) for column, name in zip(named, ROW, strict=True)))


def _bound(
    bounds: dict[str, Position],
    rows: list[Row[Any]],
    chunk: list[str],
    reached: Callable[[Row[Any]], Position],
    unread: Callable[[str], Position],
) -> None:
    """After a full page, no run of the chunk goes past what was read of it now: a run
    with rows up to its last (``reached``), one without may not have had its turn
    (``unread``). Whole runs among them are only looked at once more."""
    if len(rows) < PAGE:
        return
    last: dict[str, Position] = {}
    for row in rows:
        last[row.execution_id] = max(last.get(row.execution_id, reached(row)), reached(row))
    for execution_id in chunk:
        at = last.get(execution_id) or unread(execution_id)
        bounds[execution_id] = min(bounds.get(execution_id, at), at)


def _utc(value: datetime) -> datetime:
    converted = as_utc(value)
    assert converted is not None
    return converted
