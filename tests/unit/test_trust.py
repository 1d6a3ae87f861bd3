"""Parts of "trust the data": a node returning fields the state model lacks fails with their
names; a runaway loop stops at max_visits; every final status sends execution_finished; a
start whose message cannot be sent says the run is stored and will be sent."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from pydantic import BaseModel, ConfigDict

from celery_durable import Durable, ExecutionFailed, RetryPolicy, Status
from celery_durable.errors import InvalidNodeOption, StartNotDispatched
from celery_durable.signals import execution_finished
from celery_durable.testing import fast_forward, in_process_worker


class Count(BaseModel):
    n: int = 0


def test_unknown_output_keys_fail_the_node_naming_them(durable_embedded: Durable) -> None:
    g = durable_embedded.graph("typo", state=Count)

    @g.node(retry=RetryPolicy(max_attempts=3, initial_delay=0.01))
    def bump(state: Count) -> dict[str, int]:
        return {"n": 1, "totl": 2}

    g.entry(bump)
    with in_process_worker(durable_embedded), pytest.raises(ExecutionFailed) as failed:
        g.delay().wait(timeout=10)
    assert failed.value.error["type"] == "UnknownStateFields"
    assert "'totl'" in failed.value.error["message"]
    assert failed.value.error["attempt"] == 1  # no retry can fix it


def test_a_model_that_allows_extra_fields_keeps_them(durable_embedded: Durable) -> None:
    class Open(BaseModel):
        model_config = ConfigDict(extra="allow")
        n: int = 0

    g = durable_embedded.graph("open", state=Open)

    @g.node
    def bump(state: Open) -> dict[str, int]:
        return {"n": 1, "note": 2}

    g.entry(bump)
    with in_process_worker(durable_embedded):
        assert g.delay().wait(timeout=10).model_dump() == {"n": 1, "note": 2}


def test_a_runaway_loop_stops_at_max_visits(durable_embedded: Durable) -> None:
    g = durable_embedded.graph("loop", state=Count)

    @g.node(max_visits=25)
    def again(state: Count) -> dict[str, int]:
        return {"n": state.n + 1}

    g.entry(again)
    g.branch(again, lambda state: "again", paths=["again"])
    with in_process_worker(durable_embedded), pytest.raises(ExecutionFailed) as failed:
        g.delay().wait(timeout=20)
    assert failed.value.error["type"] == "VisitCapReached"
    assert "max_visits=25" in failed.value.error["message"]
    assert durable_embedded.get(failed.value.execution_id).state.n == 25
    with pytest.raises(InvalidNodeOption):
        g.node(max_visits=0)


def test_every_final_status_sends_execution_finished(durable_embedded: Durable) -> None:
    seen: list[tuple[str, str]] = []

    def record(sender: Any = None, **kw: Any) -> None:
        if sender is durable_embedded:
            seen.append((kw["execution_id"], str(kw["status"])))

    execution_finished.connect(record)
    try:
        g = durable_embedded.graph("ends", state=Count)

        @g.node(retry=RetryPolicy.never())
        def maybe(state: Count) -> dict[str, int]:
            if state.n < 0:
                raise ValueError("negative")
            return {"n": state.n}

        g.entry(maybe)
        with in_process_worker(durable_embedded):
            ok = g.delay(n=1)
            ok.wait(timeout=10)
            bad = g.delay(n=-1)
            with pytest.raises(ExecutionFailed):
                bad.wait(timeout=10)
        cancelled = g.delay(n=2)  # no worker: it stays running until cancelled
        cancelled.cancel(by="test")
    finally:
        execution_finished.disconnect(record)
    assert sorted(seen) == sorted(
        [(ok.id, "succeeded"), (bad.id, "failed"), (cancelled.id, "cancelled")]
    )


def test_a_start_with_the_broker_down_is_stored_and_sent_by_recovery(
    durable_embedded: Durable, durable_database_url: str
) -> None:
    down = Celery("down", broker="amqp://guest:guest@127.0.0.1:9//")
    down.conf.update(broker_connection_retry=False, task_publish_retry=False)
    client = Durable(down, durable_database_url)
    for durable in (client, durable_embedded):
        g = durable.graph("hello", state=Count)
        g.node(lambda state: {"n": state.n + 1}, name="bump")
        g.entry("bump")
    with pytest.raises(StartNotDispatched, match="is stored") as refused:
        client.graphs["hello"].apply_async({"n": 1}, execution_id="hello-1")
    assert refused.value.execution_id == "hello-1"
    assert durable_embedded.get("hello-1").status == Status.RUNNING
    # Starting again is safe: the same run, no second one.
    assert client.graphs["hello"].apply_async({"n": 1}, execution_id="hello-1").id == "hello-1"
    assert [r.id for r in durable_embedded.list()] == ["hello-1"]
    with in_process_worker(durable_embedded):
        fast_forward(durable_embedded, durable_embedded.settings.stale_after)
        assert durable_embedded.get("hello-1").wait(timeout=10).n == 2
    client.db.dispose()


@pytest.fixture
def tamper_durable(database_url: str) -> Any:
    from celery_durable.testing import embedded_app

    durable = Durable(embedded_app("tamper"), database_url)
    durable.migrate()
    yield durable
    durable.db.dispose()


def test_a_changed_execution_row_is_refused_naming_run_and_seq(tamper_durable: Durable) -> None:
    from sqlalchemy import text

    from celery_durable.errors import CheckpointCorrupted

    durable = tamper_durable
    g = durable.graph("fragile", state=Count)

    @g.node(retry=RetryPolicy.never())
    def check(state: Count) -> dict[str, int]:
        if state.n < 5:
            raise ValueError("too small")
        return {"n": state.n}

    g.entry(check)
    with in_process_worker(durable):
        run = g.delay(n=1)
        with pytest.raises(ExecutionFailed):
            run.wait(timeout=10)
    with durable.db.engine.begin() as conn:  # the chaos: plain SQL behind the engine's back
        conn.execute(
            text("UPDATE durable_executions SET state = :s WHERE id = :id"),
            {"s": '{"n":99}', "id": run.id},
        )
    with pytest.raises(CheckpointCorrupted) as corrupted:
        run.retry(by="ops")
    assert corrupted.value.execution_id == run.id and corrupted.value.seq == 1
    assert f"execution {run.id!r} (at checkpoint 1)" in str(corrupted.value)
    with durable.db.engine.connect() as conn:
        status = conn.execute(
            text("SELECT status FROM durable_executions WHERE id = :id"), {"id": run.id}
        ).scalar_one()
    assert status == "failed"  # nothing changed
    assert len(run.history()) == 2  # the checkpoints are intact and still readable
    listed = durable.list()  # listing does not decide anything: it still shows the run
    assert [r.id for r in listed] == [run.id]


def test_on_failure_intervene_stops_for_an_operator_who_retries(durable_embedded: Durable) -> None:
    from celery_durable import NeedsIntervention
    from celery_durable.signals import intervention_required

    signalled: list[str] = []

    def record(sender: Any = None, **kw: Any) -> None:
        if sender is durable_embedded:
            signalled.append(kw["step"])

    g = durable_embedded.graph("careful", state=Count, on_failure="intervene")
    healthy: list[bool] = []

    @g.node(retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
    def charge(state: Count) -> dict[str, int]:
        if not healthy:
            raise ConnectionError("card network down")
        return {"n": 1}

    g.entry(charge)
    intervention_required.connect(record)
    try:
        with in_process_worker(durable_embedded):
            run = g.delay()
            with pytest.raises(NeedsIntervention):
                run.wait(timeout=10)
            assert run.status == Status.NEEDS_INTERVENTION
            assert run.error is not None and run.error["type"] == "ConnectionError"
            healthy.append(True)
            run.retry(by="ops", reason="network back")
            assert run.wait(timeout=10).n == 1
    finally:
        intervention_required.disconnect(record)
    assert signalled == ["charge"]


def test_a_corrupted_checkpoint_is_contained_and_verify_reports_it(
    tamper_durable: Durable,
) -> None:
    from sqlalchemy import text

    from celery_durable.errors import CheckpointCorrupted

    durable = tamper_durable
    trip = durable.saga("trip", state=Count)

    @trip.step
    def book(state: Count) -> dict[str, int]:
        return {"n": state.n + 1}

    @book.compensation
    def unbook(state: Count) -> None:
        return None

    @trip.step
    def pay(state: Count) -> dict[str, int]:
        return {"n": state.n + 10}

    with in_process_worker(durable):
        run = trip.delay()
        run.wait(timeout=10)
    assert durable.verify() == []
    with durable.db.engine.begin() as conn:  # the chaos: plain SQL on checkpoint 1
        conn.execute(
            text("UPDATE durable_checkpoints SET state = :s WHERE execution_id = :id AND seq = 1"),
            {"s": '{"n":99}', "id": run.id},
        )
    history = run.history()
    assert [(cp.seq, cp.corrupted) for cp in history] == [(0, False), (1, True), (2, False)]
    assert history[1].state == {} and history[2].state == {"n": 11}
    assert run.progress().done == 2
    with pytest.raises(CheckpointCorrupted, match="Checkpoint 1 of execution"):
        run.compensate("needs the state book committed")
    assert run.refresh().status == Status.SUCCEEDED  # refused, nothing changed
    assert durable.verify() == [(run.id, 1, "checkpoint")]


def test_an_operator_restarts_a_run_whose_row_was_damaged(tamper_durable: Durable) -> None:
    from sqlalchemy import text

    from celery_durable.errors import CheckpointCorrupted

    durable = tamper_durable
    g = durable.graph("healed", state=Count)
    flaky: list[bool] = []

    @g.node
    def first(state: Count) -> dict[str, int]:
        return {"n": state.n + 1}

    @g.node(retry=RetryPolicy.never())
    def second(state: Count) -> dict[str, int]:
        if not flaky:
            raise ValueError("down")
        return {"n": state.n * 10}

    g.entry(first)
    g.edge(first, second)
    with in_process_worker(durable):
        run = g.delay(n=1)
        with pytest.raises(ExecutionFailed):
            run.wait(timeout=10)
        with durable.db.engine.begin() as conn:  # the chaos: the row's state, by plain SQL
            conn.execute(
                text("UPDATE durable_executions SET state = :s WHERE id = :id"),
                {"s": '{"n":1000}', "id": run.id},
            )
        assert durable.verify() == [(run.id, 2, "row")]
        with pytest.raises(CheckpointCorrupted):
            run.retry(by="ops")  # retry goes on from the row: refused
        flaky.append(True)
        run.restart_from(1, by="ops", reason="row damaged; checkpoint 1 verifies")
        assert run.wait(timeout=10).n == 20  # from checkpoint 1's n=2, not the row's 1000
    assert durable.verify() == []  # the restart rewrote the row with a fresh checksum
    restart = next(cp for cp in run.history() if cp.kind == "manual")
    assert restart.meta is not None and restart.meta["from_seq"] == 1
