"""run.stream() and ctx.emit(), on SQLite and PostgreSQL with an in-process worker: every
checkpoint as it commits, in order, none missed (fan-out too); resumable from any item;
emitted values interleaved where the run placed them, never checkpoints."""

from __future__ import annotations

import operator
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated, Any

import psycopg
import pytest
from pydantic import BaseModel
from sqlalchemy import func, select

from celery_durable import (
    Checkpoint,
    Context,
    Durable,
    ExecutionNotFound,
    Reduce,
    RetryPolicy,
    Status,
    WaitTimeout,
)
from celery_durable.engine.execution import Execution
from celery_durable.engine.stream import Emitter, stream_runs
from celery_durable.errors import PayloadTooLarge
from celery_durable.model.records import Kind
from celery_durable.persistence.stream_rows import Emitted, emits, stream_readers
from celery_durable.testing import embedded_app, fast_forward, in_process_worker
from tests.waiting import wait_for

Item = Checkpoint | Emitted


class Work(BaseModel):
    n: int = 0
    parts: Annotated[list[int], Reduce(operator.add)] = []
    saw_a: bool = False


@pytest.fixture
def durable(database_url: str) -> Iterator[Durable]:
    durable = Durable(embedded_app(f"stream-{uuid.uuid4().hex[:8]}"), database_url=database_url)
    durable.migrate()
    yield durable
    durable.db.dispose()


def place(item: Item) -> tuple[str, int, int, str]:
    """An item as the tests compare it: kind, seq, index (0: a checkpoint), node."""
    if isinstance(item, Emitted):
        return ("emit", item.seq, item.index, item.node)
    return (str(item.kind), item.seq, 0, item.node)


def checkpoints_of(items: list[Item]) -> list[tuple[int, str, str]]:
    return [(i.seq, str(i.kind), i.node) for i in items if isinstance(i, Checkpoint)]


def history_of(run: Any) -> list[tuple[int, str, str]]:
    return [(c.seq, str(c.kind), c.node) for c in run.history()]


def test_each_checkpoint_streams_as_it_commits_and_the_stream_ends_with_the_run(
    durable: Durable,
) -> None:
    g = durable.graph("live", state=Work)
    seen_a = threading.Event()

    @g.node
    def a(s: Work) -> dict[str, int]:
        return {"n": 1}

    @g.node
    def b(s: Work) -> dict[str, Any]:
        # Runs only once the reader has a's checkpoint: the stream is live, not replayed.
        return {"n": 2, "saw_a": seen_a.wait(10)}

    g.entry(a)
    g.edge(a, b)
    with in_process_worker(durable):
        run = g.delay()
        items: list[Item] = []
        for item in run.stream(timeout=20):
            items.append(item)
            if isinstance(item, Checkpoint) and item.node == "a":
                assert run.status == Status.RUNNING  # b has not committed yet
                seen_a.set()
    # The iterator ended by itself once the run succeeded, b's checkpoint included
    assert run.status == Status.SUCCEEDED and run.state.saw_a is True
    assert (
        checkpoints_of(items)
        == history_of(run)
        == [(0, "start", ""), (1, "node", "a"), (2, "node", "b")]
    )


def test_a_fan_out_streams_every_commit_in_seq_order(durable: Durable) -> None:
    g = durable.graph("fan", state=Work)

    @g.node
    def root(s: Work) -> None:
        return None

    def part(k: int) -> Any:
        def branch(s: Work) -> dict[str, list[int]]:
            time.sleep(0.01)
            return {"parts": [k]}

        branch.__name__ = branch.__qualname__ = f"p{k}"
        return g.node(branch)

    branches = [part(k) for k in range(6)]

    @g.node
    def join(s: Work) -> dict[str, int]:
        return {"n": sum(s.parts)}

    g.entry(root)
    g.edge(root, branches)
    g.edge(branches, join)
    with in_process_worker(durable, pool="threads", concurrency=4):
        runs = [g.delay() for _ in range(3)]
        streamed = [list(run.stream(timeout=30)) for run in runs]
    for run, items in zip(runs, streamed, strict=True):
        assert run.state.n == 15
        seqs = [i.seq for i in items]
        assert seqs == list(range(len(seqs))), "every version, once, in order"
        assert checkpoints_of(items) == history_of(run)


def test_emitted_values_stream_between_checkpoints_and_never_become_history(
    durable: Durable,
) -> None:
    g = durable.graph("chatty", state=Work)

    class Note(BaseModel):
        text: str

    @g.node
    def a(s: Work, ctx: Context) -> dict[str, int]:
        for i in range(3):
            ctx.emit({"progress": i})
        return {"n": 1}

    @g.node
    def b(s: Work, ctx: Context) -> dict[str, int]:
        ctx.emit(Note(text="half"))
        ctx.emit("done")
        return {"n": 2}

    g.entry(a)
    g.edge(a, b)
    with in_process_worker(durable):
        run = g.delay()
        items = list(run.stream(timeout=20))
    assert [place(i) for i in items] == [
        ("start", 0, 0, ""),
        ("emit", 0, 1, "a"),
        ("emit", 0, 2, "a"),
        ("emit", 0, 3, "a"),
        ("node", 1, 0, "a"),
        ("emit", 1, 1, "b"),
        ("emit", 1, 2, "b"),
        ("node", 2, 0, "b"),
    ]
    values = [i for i in items if isinstance(i, Emitted)]
    assert [v.data for v in values] == [
        {"progress": 0},
        {"progress": 1},
        {"progress": 2},
        {"text": "half"},
        "done",
    ]
    assert {(v.execution_id, v.kind, v.visit, v.attempt) for v in values} == {
        (run.id, Kind.NODE, 1, 1)
    }
    # Not checkpoints: history and the state are what they would be without them
    assert history_of(run) == [(0, "start", ""), (1, "node", "a"), (2, "node", "b")]
    assert run.state.n == 2


def test_a_stream_resumes_exactly_past_any_item(durable: Durable) -> None:
    g = durable.graph("resume", state=Work)

    @g.node
    def a(s: Work, ctx: Context) -> dict[str, int]:
        ctx.emit(1)
        ctx.emit(2)
        return {"n": 1}

    @g.node
    def b(s: Work, ctx: Context) -> dict[str, int]:
        ctx.emit(3)
        return {"n": 2}

    g.entry(a)
    g.edge(a, b)
    with in_process_worker(durable):
        run = g.delay()
        run.wait(timeout=20)
    whole = [place(i) for i in run.stream(timeout=10)]
    items = list(run.stream(timeout=10))
    for k, item in enumerate(items):
        # After any item yielded: exactly what followed it
        assert [place(i) for i in run.stream(after=item, timeout=10)] == whole[k + 1 :]
    # After a seq: that checkpoint's successors, the values emitted after it included
    assert [place(i) for i in run.stream(after=1, timeout=10)] == [
        ("emit", 1, 1, "b"),
        ("node", 2, 0, "b"),
    ]
    assert list(run.stream(after=2, timeout=10)) == []


def test_a_finished_run_streams_its_history_and_ends(durable: Durable) -> None:
    g = durable.graph("done", state=Work)

    @g.node
    def only(s: Work) -> dict[str, int]:
        return {"n": 1}

    g.entry(only)
    with in_process_worker(durable):
        run = g.delay()
        run.wait(timeout=20)
    started = time.monotonic()
    items = list(run.stream())
    assert checkpoints_of(items) == history_of(run)
    assert time.monotonic() - started < 5


def test_a_retried_attempt_emits_again_and_says_which_attempt_it_was(durable: Durable) -> None:
    g = durable.graph("flaky", state=Work)
    calls = []

    @g.node(retry=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=False))
    def shaky(s: Work, ctx: Context) -> dict[str, int]:
        calls.append(ctx.attempt)
        ctx.emit({"attempt": ctx.attempt})
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return {"n": 1}

    g.entry(shaky)
    with in_process_worker(durable):
        run = g.delay()
        items = list(run.stream(timeout=20))
    values = [(i.attempt, i.data) for i in items if isinstance(i, Emitted)]
    assert values == [(1, {"attempt": 1}), (2, {"attempt": 2})]
    assert calls == [1, 2]
    assert checkpoints_of(items) == history_of(run)


def test_a_stream_that_outlives_its_timeout_raises_and_resumes(durable: Durable) -> None:
    g = durable.graph("sleeper", state=Work)

    @g.node
    def nap(s: Work, ctx: Context) -> dict[str, int]:
        ctx.emit("going to sleep")
        ctx.sleep(3600)
        return {"n": 1}

    g.entry(nap)
    with in_process_worker(durable):
        run = g.delay()
        wait_for(lambda: run.status == Status.WAITING, 10, what="the sleep")
        seen: list[Item] = []
        with pytest.raises(WaitTimeout):
            for item in run.stream(timeout=0.5):
                seen.append(item)
        # What happened before the timeout was yielded: the start, the value, the wait
        assert [place(i)[0] for i in seen] == ["start", "emit", "wait"]
        # When the hour has passed, a stream resumed past the last item yields the rest
        fast_forward(durable, 3600)
        rest = list(run.stream(after=seen[-1], timeout=20))
    assert [place(i)[0] for i in rest] == ["wake", "emit", "node"]
    assert checkpoints_of(seen + rest) == history_of(run)


def test_streaming_an_unknown_run_raises(durable: Durable) -> None:
    with pytest.raises(ExecutionNotFound):
        next(Execution(durable.runtime, "no-such-run").stream(timeout=1))


def test_a_value_over_the_size_limit_is_refused(database_url: str) -> None:
    durable = Durable(embedded_app("big"), database_url=database_url, max_state_bytes=100)
    durable.migrate()
    g = durable.graph("big", state=Work)

    @g.node
    def only(s: Work) -> None:
        return None

    g.entry(only)
    run = g.delay()
    emitter = Emitter(durable.runtime, Kind.NODE, run.id, "only", 1, 1)
    with pytest.raises(PayloadTooLarge):
        emitter.emit("x" * 200)
    emitter.emit("small")
    items: list[Item] = []
    with pytest.raises(WaitTimeout):  # no worker: the run never ends
        items.extend(run.stream(timeout=0.3))
    assert [place(i) for i in items] == [("start", 0, 0, ""), ("emit", 0, 1, "only")]
    assert [i.data for i in items if isinstance(i, Emitted)] == ["small"]
    durable.db.dispose()


def test_emitted_values_are_pruned_with_their_run(durable: Durable) -> None:
    g = durable.graph("pruned", state=Work)

    @g.node
    def only(s: Work, ctx: Context) -> None:
        ctx.emit("kept until pruned")

    g.entry(only)
    with in_process_worker(durable):
        run = g.delay()
        run.wait(timeout=20)

    def count() -> int:
        query = select(func.count()).select_from(emits).where(emits.c.execution_id == run.id)
        with durable.db.read() as conn:
            return int(conn.execute(query).scalar_one())

    assert count() == 1
    assert durable.prune(older_than=timedelta(0)).total == 1
    assert count() == 0


def test_parallel_branches_emitting_at_once_place_every_value_once(durable: Durable) -> None:
    g = durable.graph("chorus", state=Work)

    @g.node
    def root(s: Work) -> None:
        return None

    def voice(k: int) -> Any:
        def sing(s: Work, ctx: Context) -> dict[str, list[int]]:
            for i in range(20):
                ctx.emit([k, i])
            return {"parts": [k]}

        sing.__name__ = sing.__qualname__ = f"voice{k}"
        return g.node(sing)

    branches = [voice(k) for k in range(4)]

    g.entry(root)
    g.edge(root, branches)
    with in_process_worker(durable, pool="threads", concurrency=4):
        run = g.delay()
        items = list(run.stream(timeout=30))
    values = [i for i in items if isinstance(i, Emitted)]
    assert sorted(v.data for v in values) == sorted([k, i] for k in range(4) for i in range(20))
    # Each branch's values in the order it emitted them
    for k in range(4):
        assert [v.data[1] for v in values if v.data[0] == k] == list(range(20))
    # Places are unique and every checkpoint is there, in order
    places = [place(i)[1:3] for i in items]
    assert places == sorted(set(places))
    assert checkpoints_of(items) == history_of(run)


def test_durable_stream_follows_the_runs_of_its_graphs_started_after_it(
    durable: Durable,
) -> None:
    g = durable.graph("fleet", state=Work)
    other = durable.graph("elsewhere", state=Work)

    @g.node
    def a(s: Work, ctx: Context) -> dict[str, int]:
        ctx.emit("a")
        return {"n": 1}

    @g.node
    def b(s: Work) -> dict[str, int]:
        return {"n": 2}

    @other.node
    def c(s: Work) -> None:
        return None

    g.entry(a)
    g.edge(a, b)
    other.entry(c)
    collected: list[Item] = []
    three_done = threading.Event()
    runs: list[Any] = []

    def read() -> None:
        for item in stream_runs(durable.runtime, ["fleet"], timeout=20):
            collected.append(item)
            ends = [i for i in collected if isinstance(i, Checkpoint) and i.node == "b"]
            if {i.execution_id for i in ends} >= {run.id for run in runs} and runs:
                three_done.set()
                return

    with in_process_worker(durable):
        before = g.delay()
        before.wait(timeout=20)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        # Once the stream yields something of a run started now, it is surely open
        probe = g.delay()
        wait_for(lambda: any(i.execution_id == probe.id for i in collected), 20, what="probe")
        unrelated = other.delay()
        # All three at once: the reader stops when every run it knows of has ended.
        runs.extend([g.delay() for _ in range(3)])
        assert three_done.wait(20)
        unrelated.wait(timeout=10)
    # Every run of the graph started after the stream, whole; nothing of the others
    for run in runs:
        mine = [i for i in collected if i.execution_id == run.id]
        assert checkpoints_of(mine) == history_of(run)
        assert [place(i)[0] for i in mine] == ["start", "emit", "node", "node"]
    assert {i.execution_id for i in collected} == {probe.id} | {run.id for run in runs}


def test_on_postgresql_only_streamed_runs_notify(pg_url: str) -> None:
    # The node commit is the hot path: a NOTIFY in it costs every commit PostgreSQL's
    # notification lock, so a run nobody streams must not send one.
    durable = Durable(embedded_app("quiet"), database_url=pg_url)
    durable.migrate()
    g = durable.graph("quiet", state=Work)

    @g.node
    def a(s: Work) -> dict[str, int]:
        return {"n": 1}

    g.entry(a)
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://", 1)

    def readers() -> int:
        with durable.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(stream_readers)).scalar_one())

    with psycopg.connect(dsn, autocommit=True) as listen:
        listen.execute("LISTEN durable_stream")
        with in_process_worker(durable):
            g.delay().wait(timeout=20)
        assert list(listen.notifies(timeout=0.3)) == []
        # Given a stream open on a run no worker has taken yet
        run = g.delay()
        items: list[Item] = []
        reader = threading.Thread(target=lambda: items.extend(run.stream(timeout=20)))
        reader.start()
        wait_for(lambda: readers() == 1, 10, what="the stream's reader row")
        # When a worker runs it, its commits notify the stream
        with in_process_worker(durable):
            reader.join(20)
        heard = {n.payload for n in listen.notifies(timeout=0.5)}
    assert checkpoints_of(items) == history_of(run)
    assert any(run.id in payload for payload in heard)
    # The stream's reader row went with it
    assert readers() == 0
    durable.db.dispose()


def test_a_context_outside_a_worker_cannot_emit() -> None:
    ctx = Context(None, execution_id="e", node="n", visit=1, attempt=1, idempotency_key="k")
    with pytest.raises(RuntimeError, match=r"ctx\.emit"):
        ctx.emit("nowhere")
