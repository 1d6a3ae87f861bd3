"""Graph versions: every run keeps the version of its graph that started it.

Versions live side by side in one app, sharing node task names; a run's messages carry its
version, so a worker runs each visit on the run's own structure. ``upgrade()`` moves a run
onto another version, audited, and is refused (changing nothing) where that cannot be done.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
from pydantic import BaseModel

from celery_durable import Durable, NeedsIntervention, Status
from celery_durable.engine.base import Base
from celery_durable.engine.fleet import Fleet, Member, difference
from celery_durable.errors import (
    CannotUpgrade,
    DuplicateVersion,
    GraphVersionMissing,
    InvalidTransition,
    VersionClash,
)
from celery_durable.graphs.builder import Graph
from celery_durable.model.records import Kind
from celery_durable.signals import intervention_required
from celery_durable.tasks.message import Message
from celery_durable.testing import embedded_app, in_process_worker
from tests.waiting import wait_for


class Trip(BaseModel):
    path: list[str] = []


def step(name: str) -> Callable[[Trip], dict[str, Any]]:
    def node(state: Trip) -> dict[str, Any]:
        return {"path": [*state.path, name]}

    node.__name__ = name
    return node


def chain(durable: Durable, names: list[str], version: str | None = None, **options: Any) -> Graph:
    """``a -> ... -> z`` of graph "trip"; ``options`` go to every node named in them:
    ``{"b": {"interrupt_before": True}}``."""
    g = durable.graph("trip", state=Trip, version=version)
    for name in names:
        g.node(step(name), **options.get(name, {}))
    g.entry(names[0])
    for here, there in itertools.pairwise(names):
        g.edge(here, there)
    return g


Worker = Callable[[], AbstractContextManager[object]]


def test_runs_of_each_version_take_their_own_path(durable: Durable, worker: Worker) -> None:
    v1 = chain(durable, ["a", "b", "c"], version="1")
    v2 = chain(durable, ["a", "x", "c"], version="2")
    with worker():
        old, new = v1.delay(), v2.delay()
        by_name = durable.start("trip", {})
        assert old.wait(timeout=10).path == ["a", "b", "c"]  # type: ignore[attr-defined]
        assert new.wait(timeout=10).path == ["a", "x", "c"]  # type: ignore[attr-defined]
        assert by_name.wait(timeout=10).path == ["a", "x", "c"]  # type: ignore[attr-defined]
    assert (old.version, new.version, by_name.version) == ("1", "2", "2")
    assert durable.graph_at("trip", "1") is v1 and durable.graph_at("trip", None) is v2
    counts = durable.runs_by_version()
    assert counts[("trip", "1", Status.SUCCEEDED)] == 1
    assert counts[("trip", "2", Status.SUCCEEDED)] == 2


def test_a_run_parked_on_one_version_resumes_on_it_after_another_is_added(
    durable: Durable, worker: Worker
) -> None:
    v1 = chain(durable, ["a", "b", "c"], version="1", b={"interrupt_before": True})
    parked = v1.delay()
    with worker():
        wait_for(lambda: parked.status == Status.WAITING, 5.0)
    chain(durable, ["a", "x", "c"], version="2", x={"interrupt_before": True})
    with worker():
        parked.resume(by="ops")
        assert parked.wait(timeout=10).path == ["a", "b", "c"]  # type: ignore[attr-defined]


def test_a_change_of_node_code_is_not_a_new_version_a_change_of_structure_is(
    durable: Durable,
) -> None:
    other = Durable(embedded_app(f"other-{uuid.uuid4().hex[:6]}"), database_url="sqlite://")
    base = chain(durable, ["a", "b"]).version
    same = other.graph("trip", state=Trip)
    same.node(lambda s: {"path": ["changed"]}, name="a", retry=None, timeout=5)
    same.node(lambda s: None, name="b")
    same.entry("a")
    same.edge("a", "b")
    assert same.version == base
    same.edge("b", "a")
    assert same.version != base
    assert len(base) == 12
    routed = Durable(embedded_app(f"routed-{uuid.uuid4().hex[:6]}"), database_url="sqlite://")
    assert chain(routed, ["a", "b"], b={"queue": "gpu"}).version != base
    paused = Durable(embedded_app(f"paused-{uuid.uuid4().hex[:6]}"), database_url="sqlite://")
    assert chain(paused, ["a", "b"], b={"interrupt_before": True}).version != base


def test_two_definitions_cannot_claim_one_version(durable: Durable) -> None:
    chain(durable, ["a", "b"], version="1")
    with pytest.raises(DuplicateVersion, match="its own version="):
        chain(durable, ["a", "x"], version="1")


def test_upgrade_moves_a_waiting_run_onto_the_new_path_audited(
    durable: Durable, worker: Worker
) -> None:
    v1 = chain(durable, ["a", "b", "c"], version="1", b={"interrupt_before": True})
    run = v1.delay()
    with worker():
        wait_for(lambda: run.status == Status.WAITING, 5.0)
    g2 = durable.graph("trip", state=Trip, version="2")
    for name in ("a", "b", "y", "c"):
        g2.node(step(name), interrupt_before=name == "b")
    g2.entry("a")
    g2.edge("a", "b")
    g2.edge("b", "y")
    g2.edge("y", "c")
    assert run.upgrade(by="ops", reason="moved") == "2"
    assert run.version == "2" and run.status == Status.WAITING
    moved = run.history()[-1]
    assert moved.kind == Kind.MANUAL and moved.meta is not None
    assert (moved.meta["op"], moved.meta["by"], moved.meta["reason"]) == ("upgrade", "ops", "moved")
    assert (moved.meta["from_version"], moved.meta["to_version"]) == ("1", "2")
    with worker():
        run.resume()
        assert run.wait(timeout=10).path == ["a", "b", "y", "c"]  # type: ignore[attr-defined]


def test_upgrade_is_refused_where_it_cannot_be_done(durable: Durable, worker: Worker) -> None:
    v1 = chain(durable, ["a", "b", "c"], version="1", b={"interrupt_before": True})
    run = v1.delay()
    with worker():
        wait_for(lambda: run.status == Status.WAITING, 5.0)
    chain(durable, ["a", "x", "c"], version="2")
    before = run.refresh().version
    with pytest.raises(CannotUpgrade, match="node\\(s\\) b, which version '2' does not have"):
        run.upgrade()
    with pytest.raises(CannotUpgrade, match="defines versions 1, 2"):
        run.upgrade(version="3")
    pending = v1.delay()  # no worker: its entry node is in flight
    with pytest.raises(InvalidTransition):
        pending.upgrade(version="1")
    assert run.refresh().version == before and run.version == "1"


def test_upgrade_fits_the_state_to_the_target_model(durable: Durable, worker: Worker) -> None:
    v1 = chain(durable, ["a", "b"], version="1", b={"interrupt_before": True})
    run = v1.delay()
    with worker():
        wait_for(lambda: run.status == Status.WAITING, 5.0)

    class TripV2(BaseModel):
        path: list[str]
        legs: int

    g2 = durable.graph("trip", state=TripV2, version="2")
    g2.upgrade(lambda old: {**old, "legs": len(old["path"])})
    g2.node(lambda s: None, name="a")
    g2.node(lambda s: {"legs": s.legs + 1}, name="b", interrupt_before=True)
    g2.entry("a")
    g2.edge("a", "b")
    run.upgrade(version="2")
    assert run.refresh().state == {"path": ["a"], "legs": 1}
    with worker():
        run.resume()
        assert run.wait(timeout=10).legs == 2  # type: ignore[attr-defined]


def test_a_visit_of_a_version_no_live_worker_serves_stops_the_run(
    durable: Durable, sqlite_url: str
) -> None:
    v1 = chain(durable, ["a", "b"], version="1", b={"interrupt_before": True})
    run = v1.delay()
    with in_process_worker(durable):
        wait_for(lambda: run.status == Status.WAITING, 5.0)
    newer = Durable(embedded_app(f"v2-{uuid.uuid4().hex[:6]}"), database_url=sqlite_url)
    try:
        chain(newer, ["a", "x"], version="2")
        signalled: list[dict[str, Any]] = []

        def heard(sender: Any, **kwargs: Any) -> None:
            signalled.append(kwargs)

        intervention_required.connect(heard)
        try:
            with in_process_worker(newer):
                newer.get(run.id).resume(by="ops")
                wait_for(lambda: run.status == Status.NEEDS_INTERVENTION, 5.0)
        finally:
            intervention_required.disconnect(heard)
        with pytest.raises(NeedsIntervention) as raised:
            run.wait(timeout=1)
        error = raised.value.error
        assert error["type"] == "GraphVersionMissing" and error["node"] == "b"
        assert "version '1'" in error["message"] and "deployed: 2" in error["message"]
        # The version 1 worker left; its rows still say what version 1 was.
        assert "version 2 differs: nodes added: x; nodes removed: b" in error["message"]
        assert [s["execution_id"] for s in signalled] == [run.id]
        # The run is carried on by code that still defines version 1.
        with in_process_worker(durable):
            assert run.upgrade(version="1") == "1"
            assert run.wait(timeout=10).path == ["a", "b"]  # type: ignore[attr-defined]
    finally:
        newer.db.dispose()


def test_a_worker_refuses_a_version_a_live_worker_serves_with_another_structure(
    durable: Durable,
) -> None:
    fleet = Fleet(durable.runtime.fleet.rows, heartbeat=10)
    old = chain(durable, ["a", "b"], version="1").definition()
    Member(fleet, "old@host", [old], ["celery"]).join()
    other = Durable(embedded_app(f"new-{uuid.uuid4().hex[:6]}"), database_url="sqlite://")
    new = chain(other, ["a", "x"], version="1").definition()
    with pytest.raises(VersionClash, match="nodes added: x; nodes removed: b"):
        Member(fleet, "new@host", [new], ["celery"]).join()
    assert [d.worker for d in fleet.live()] == ["old@host"]
    Member(fleet, "twin@host", [old], ["celery"]).join()  # the same structure is welcome
    assert sorted(d.worker for d in fleet.live()) == ["old@host", "twin@host"]


def test_the_fleet_forgets_a_worker_that_left_or_stopped_beating(durable: Durable) -> None:
    fleet = Fleet(durable.runtime.fleet.rows, heartbeat=0.05)
    member = Member(fleet, "w@host", [chain(durable, ["a"], version="1").definition()], ["q"])
    member.join()
    assert fleet.serving("trip", "1", "q") and not fleet.serving("trip", "1", "other")
    wait_for(lambda: not fleet.live(), 2.0)
    member.beat()
    assert [d.worker for d in fleet.live()] == ["w@host"]
    member.leave()
    assert fleet.live() == []
    # Kept, no longer live: what a version no worker serves looked like.
    assert [d.worker for d in fleet.known("trip")] == ["w@host"]


def test_difference_says_what_changed() -> None:
    old = {"entry": "a", "nodes": {"a": {}, "b": {}}, "edges": {"a": ["b"]}}
    new = {"entry": "a", "nodes": {"a": {}, "x": {"queue": "gpu"}}, "edges": {"a": ["x"]}}
    assert difference(old, new) == (
        "nodes added: x; nodes removed: b; edges changed: a → b became x"
    )
    assert difference(old, old) == "same structure"


def test_a_message_carries_its_runs_version(durable: Durable) -> None:
    g = chain(durable, ["a"], version="7")
    run = g.delay()
    record = durable.store.get_execution(run.id)
    assert record.cursor.graph_version == "7"
    kwargs = Message(run.id, 1, Base.of(record)).kwargs()
    assert Message.read(run.id, 1, kwargs).base.cursor.graph_version == "7"


def test_the_version_a_process_lacks_is_refused_by_name(durable: Durable, sqlite_url: str) -> None:
    run = chain(durable, ["a", "b"], version="1", b={"interrupt_before": True}).delay()
    newer = Durable(embedded_app(f"v2-{uuid.uuid4().hex[:6]}"), database_url=sqlite_url)
    try:
        chain(newer, ["a", "x"], version="2")
        with pytest.raises(GraphVersionMissing, match="not defined in this process"):
            newer.get(run.id).update_state({"path": []})
    finally:
        newer.db.dispose()


def test_a_node_only_another_version_has_is_not_dropped_as_an_unknown_task(
    durable: Durable, sqlite_url: str
) -> None:
    chain(durable, ["a", "b"], version="1")
    newer = Durable(embedded_app(f"v2-{uuid.uuid4().hex[:6]}"), database_url=sqlite_url)
    try:
        v2 = chain(newer, ["a", "x"], version="2", x={"interrupt_before": True})
        run = v2.delay()
        with in_process_worker(newer):
            wait_for(lambda: run.status == Status.WAITING, 5.0)
        # Only version 1's worker runs: it never registered a task for x.
        with in_process_worker(durable):
            durable.get(run.id).resume(by="ops")
            wait_for(lambda: run.status == Status.NEEDS_INTERVENTION, 5.0)
        assert run.error is not None and run.error["type"] == "GraphVersionMissing"
        assert run.error["node"] == "x"
    finally:
        newer.db.dispose()
