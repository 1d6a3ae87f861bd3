"""A run's rows in every table that holds them: its execution row, and each row of a table
with a foreign key to it (checkpoints, visits, attempts, events, emitted values, tags).

The tables are found from the schema's metadata, not listed here, so a table added later
travels with its runs (export, import) without a change to this module. Deleting a run
deletes the execution row; the foreign keys' ON DELETE CASCADE removes the rest in the same
statement.

Each function works a batch of runs in one transaction: an export reads a consistent
picture of them (their rows locked against commits while it reads), a delete or a prune
batch removes all of them or none.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Column, Connection, Table, delete, insert, select
from sqlalchemy.exc import IntegrityError

from celery_durable.errors import ExecutionExists, ExecutionNotFound, ImportConflict, RunStillActive
from celery_durable.persistence import (  # declare their tables on the metadata
    stream_rows,  # noqa: F401
    tag_rows,  # noqa: F401
)
from celery_durable.persistence.database import Database
from celery_durable.persistence.schema import executions, metadata
from celery_durable.status import Status


def run_tables() -> list[Table]:
    """The executions table, then every table whose rows belong to a run, by name."""
    owned = [t for t in metadata.sorted_tables if t is not executions and _owner(t) is not None]
    return [executions, *sorted(owned, key=lambda t: t.name)]


def owner(table: Table) -> Column[Any]:
    """The column of ``table`` that names the run a row belongs to."""
    found = _owner(table)
    assert found is not None, f"{table.name} holds no run's rows"
    return found


def _owner(table: Table) -> Column[Any] | None:
    if table is executions:
        return executions.c.id
    return next(
        (fk.parent for fk in table.foreign_keys if fk.references(executions)),
        None,
    )


@dataclass(slots=True)
class RunRows:
    """One run as stored: table name -> its rows (column -> value as the database holds
    it), each table's rows in primary key order; a table with none is left out."""

    execution_id: str
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def row(self) -> dict[str, Any]:
        """The execution row."""
        return self.tables[executions.name][0]


class Member(NamedTuple):
    """A run of a family (a run and the children it started, theirs too)."""

    id: str
    graph: str
    status: Status


def read(conn: Connection, ids: Sequence[str], *, lock: bool = True) -> dict[str, RunRows]:
    """The rows of the runs ``ids`` names (those that exist), by id. ``lock``: take a share
    lock on their execution rows first, so no commit moves them while the rest is read (a
    node commit and its checkpoint, an emitted value, wait for it)."""
    query = select(executions).where(executions.c.id.in_(ids)).order_by(executions.c.id)
    if lock:
        query = query.with_for_update(read=True)
    found = {
        row["id"]: RunRows(row["id"], {executions.name: [dict(row)]})
        for row in conn.execute(query).mappings()
    }
    if not found:
        return found
    for table in run_tables()[1:]:
        column = owner(table)
        rows = conn.execute(
            select(table).where(column.in_(list(found))).order_by(*table.primary_key.columns)
        ).mappings()
        for row in rows:
            found[row[column.name]].tables.setdefault(table.name, []).append(dict(row))
    return found


def snapshot(db: Database, ids: Sequence[str]) -> tuple[dict[str, RunRows], list[str]]:
    """``read`` in one transaction of its own, with the ids of the runs' children."""
    with db.engine.begin() as conn:
        return read(conn, ids), children(conn, ids)


def children(conn: Connection, ids: Collection[str]) -> list[str]:
    """The ids of the runs that the runs ``ids`` started as children, in id order."""
    query = select(executions.c.id).where(executions.c.parent_id.in_(list(ids)))
    return sorted(conn.execute(query).scalars())


def restore(db: Database, run: RunRows) -> None:
    """Write a run's rows as they are, in one transaction: the execution row first. Raises
    ExecutionExists when its id is taken, ImportConflict when another row is."""
    try:
        with db.engine.begin() as conn:
            taken = select(executions.c.id).where(executions.c.id == run.execution_id)
            if conn.execute(taken).first() is not None:
                raise ExecutionExists(run.execution_id)
            for table in run_tables():
                rows = run.tables.get(table.name)
                if not rows:
                    continue
                generated = table.autoincrement_column
                if generated is not None:
                    top = max(row[generated.name] for row in rows)
                    db.dialect.follow_ids(conn, generated, top)
                conn.execute(insert(table), rows)
    except IntegrityError as exc:
        said = str(exc.orig).strip().splitlines()
        detail = said[0] if said else type(exc.orig).__name__
        raise ImportConflict(run.execution_id, detail) from exc


def family(db: Database, root: str) -> list[Member]:
    """``root`` and every run below it (children, theirs, ...), parents before children;
    raises ExecutionNotFound when there is no ``root``."""
    with db.read() as conn:
        return _family(conn, root, lock=False)


def _family(conn: Connection, root: str, *, lock: bool) -> list[Member]:
    """``family``; ``lock``: lock their execution rows for the rest of the transaction."""
    found: list[Member] = []
    seen: set[str] = set()
    layer = [root]
    while layer:
        query = select(executions.c.id, executions.c.graph, executions.c.status).where(
            executions.c.id.in_(layer)
        )
        if lock:
            query = query.with_for_update()
        rows = [Member(r.id, r.graph, Status(r.status)) for r in conn.execute(query)]
        rows.sort(key=lambda m: m.id)
        found += rows
        seen.update(m.id for m in rows)
        layer = [i for i in children(conn, [m.id for m in rows]) if i not in seen]
    if not found:
        raise ExecutionNotFound(root)
    return found


def erase(db: Database, root: str, *, only_finished: bool) -> list[Member]:
    """Delete ``root`` and the runs below it, every row of each, in one transaction; the
    runs deleted. ``only_finished``: refuse (RunStillActive, nothing deleted) when one of
    them has not finished, as found under the lock."""
    with db.engine.begin() as conn:
        members = _family(conn, root, lock=True)
        active = {m.id: str(m.status) for m in members if not m.status.finished}
        if only_finished and active:
            raise RunStillActive(root, active)
        remove(conn, [m.id for m in members])
    return members


# Ids per DELETE statement: well under SQLite's limit of bound parameters.
_CHUNK = 500


def remove(conn: Connection, ids: Sequence[str]) -> None:
    """Delete the runs ``ids``; their other rows go by the foreign keys' cascade."""
    for start in range(0, len(ids), _CHUNK):
        chunk = list(ids[start : start + _CHUNK])
        conn.execute(delete(executions).where(executions.c.id.in_(chunk)))


@dataclass(frozen=True, slots=True)
class PruneBatch:
    """Runs past retention, locked in an open transaction: read them (to archive), then
    remove those to go; the transaction commits when the block ends, or rolls back."""

    conn: Connection
    ids: list[str]

    def rows(self) -> list[RunRows]:
        found = read(self.conn, self.ids, lock=False)
        return [found[i] for i in self.ids if i in found]

    def remove(self, ids: Sequence[str]) -> None:
        remove(self.conn, ids)


@contextmanager
def prune_batch(
    db: Database,
    status: Status,
    finished_before: datetime,
    size: int,
    skip: Collection[str] = (),
) -> Iterator[PruneBatch]:
    """Up to ``size`` runs of ``status`` finished before the cutoff (not those in ``skip``),
    their execution rows locked until the block ends: a run retried meanwhile is not one."""
    query = (
        select(executions.c.id)
        .where(executions.c.status == str(status), executions.c.finished_at < finished_before)
        .limit(size)
        .with_for_update()
    )
    if skip:
        query = query.where(executions.c.id.not_in(list(skip)))
    with db.engine.begin() as conn:
        yield PruneBatch(conn, list(conn.execute(query).scalars()))
