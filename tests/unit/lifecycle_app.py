"""Graphs and runs for the lifecycle tests (delete, export, import, prune's archive): runs
that leave a row in every table a run owns, and many small runs stored directly."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, insert, select

from celery_durable import Context, Durable, Graph, RetryPolicy, Status
from celery_durable.model.cursor import Cursor
from celery_durable.model.records import Commit
from celery_durable.persistence.run_rows import RunRows, owner, read, run_tables
from celery_durable.persistence.tag_rows import tags
from tests.waiting import wait_for

RETRY_ONCE = RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=False)


class Job(BaseModel):
    n: int = 0
    wait: bool = False
    join: bool = True
    note: str = ""


def define(durable: Durable) -> tuple[Graph, Graph]:
    """``child``: emits and fails its first attempt, then waits for an event "go" when
    asked; ``parent``: starts a child and, when ``join``, waits for it."""
    child = durable.graph("child", state=Job)

    @child.node(retry=RETRY_ONCE)
    def work(state: Job, ctx: Context) -> dict[str, Any]:
        ctx.emit({"working on": state.n})
        if ctx.attempt == 1:
            raise ConnectionError("first attempt fails")
        return {"n": state.n * 2}

    @child.node
    def hold(state: Job, ctx: Context) -> dict[str, Any]:
        return {"note": ctx.wait_for_event("go")["note"]} if state.wait else {}

    child.entry(work)
    child.edge(work, hold)
    parent = durable.graph("parent", state=Job)

    @parent.node
    def spawn(state: Job, ctx: Context) -> dict[str, Any]:
        started = ctx.start_child(child, {"n": state.n, "wait": state.wait})
        return {"n": ctx.wait_child(started)["n"]} if state.join else {}

    parent.entry(spawn)
    return parent, child


def settled(durable: Durable, run_id: str, *statuses: Status) -> None:
    """Wait until the run exists and is in one of ``statuses``."""

    def there() -> bool:
        found = [run for run in durable.list(id_prefix=run_id) if run.id == run_id]
        return bool(found) and found[0].status in statuses

    wait_for(there, 20, what=f"{run_id} {statuses}")


def tag(durable: Durable, run_id: str, key: str, value: str) -> None:
    """A tag row, written as a start with tags writes it."""
    created = durable.get(run_id).record.created_at
    with durable.db.engine.begin() as conn:
        conn.execute(
            insert(tags).values(execution_id=run_id, key=key, value=value, created_at=created)
        )


def store_runs(durable: Durable, graph: str, count: int, prefix: str = "bulk") -> list[str]:
    """``count`` succeeded runs of two checkpoints each, written straight to the store (a
    worker would take a minute): every tenth with an event, every seventh with a failed
    attempt."""
    store, ids = durable.store, []
    for i in range(count):
        run_id = f"{prefix}-{i:04d}"
        store.create_execution(
            execution_id=run_id, graph=graph, fingerprint="f" * 64, state={"n": i}, cursor=Cursor()
        )
        if i % 10 == 0:
            durable.runtime.events.add(run_id, "go", '{"note":"sent"}', f"key-{i}")
        if i % 7 == 0:
            durable.visits.record_failure(run_id, "node", "work", 1, {"type": "E"}, None)
        store.save(
            Commit(
                execution_id=run_id,
                expected_version=0,
                kind="node",  # type: ignore[arg-type]
                node="work",
                visit=1,
                state={"n": i * 2},
                cursor=Cursor(),
                status=Status.SUCCEEDED,
                output={"n": i * 2},
            )
        )
        ids.append(run_id)
    return ids


def stored(durable: Durable, ids: list[str]) -> dict[str, RunRows]:
    """Every row the runs ``ids`` hold, in every table, as stored."""
    with durable.db.engine.connect() as conn:
        found: dict[str, RunRows] = {}
        for start in range(0, len(ids), 500):
            found |= read(conn, ids[start : start + 500], lock=False)
        return found


def rows_left(durable: Durable, ids: list[str]) -> dict[str, int]:
    """How many rows of the runs ``ids`` each table still holds (tables with none left out)."""
    left = {}
    with durable.db.engine.connect() as conn:
        for table in run_tables():
            count = conn.execute(
                select(func.count()).select_from(table).where(owner(table).in_(ids))
            ).scalar_one()
            if count:
                left[table.name] = count
    return left
