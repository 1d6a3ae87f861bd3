"""Definition errors surface where the definition is written, with a message saying what to do."""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from celery import Celery
from kombu import Queue
from pydantic import BaseModel

import celery_durable
from celery_durable import Durable, ExecutionFailed, RateLimit, RetryPolicy
from celery_durable.engine.definition import GraphDefinition
from celery_durable.errors import (
    DuplicateNode,
    DuplicateVersion,
    GraphDefinitionError,
    InvalidNodeOption,
    NoEntry,
    UndeclaredName,
    UnknownNode,
    UnreachableNode,
    UnsafeSerializer,
)
from celery_durable.graphs.builder import Definitions, Graph
from celery_durable.tasks.routing import check_queues
from celery_durable.testing import in_process_worker


class S(BaseModel):
    n: int = 0


SIGNALS = (
    "intervention_required",
    "execution_finished",
    "execution_started",
    "execution_stuck",
    "node_failed",
    "node_slow",
)


def test_public_api_is_pinned() -> None:
    assert celery_durable.__all__ == [
        "Durable",
        "Settings",
        "Hooks",
        "Graph",
        "Saga",
        "Node",
        "Context",
        "RetryPolicy",
        "NonRetryable",
        "Reduce",
        "RateLimit",
        "Limit",
        "Schedule",
        "Execution",
        "BulkReport",
        "PruneReport",
        "Progress",
        "Status",
        "Checkpoint",
        "Emitted",
        "intervention_required",
        "execution_finished",
        "execution_started",
        "execution_stuck",
        "node_failed",
        "node_slow",
        "DurableError",
        "ExecutionFailed",
        "Compensated",
        "ExecutionCancelled",
        "NeedsIntervention",
        "ExecutionNotFound",
        "InvalidInput",
        "InvalidTransition",
        "WaitTimeout",
        "CheckpointCorrupted",
        "EventTimeout",
        "NotWaiting",
        "ChildFailed",
        "CircuitOpen",
        "StateSchemaMismatch",
        "SchemaNotMigrated",
        "DatabaseUnavailable",
        "NoDatabase",
        "RunStillActive",
    ]
    for name in celery_durable.__all__:
        assert getattr(celery_durable, name).__doc__ or name in SIGNALS, name


def test_duplicate_node_name(durable: Durable) -> None:
    g = durable.graph("dup", state=S)
    g.node(lambda s: None, name="a")
    with pytest.raises(DuplicateNode, match="already has a node named 'a'"):
        g.node(lambda s: None, name="a")


def test_edge_to_unknown_node_names_the_known_ones(durable: Durable) -> None:
    g = durable.graph("edges", state=S)
    g.node(lambda s: None, name="a")
    with pytest.raises(UnknownNode, match="known nodes: a"):
        g.edge("a", "b")


def test_no_entry_and_unreachable_nodes_are_caught_before_anything_runs(durable: Durable) -> None:
    g = durable.graph("shape", state=S)
    g.node(lambda s: None, name="a")
    g.node(lambda s: None, name="island")
    with pytest.raises(NoEntry):
        g.delay()
    g.entry("a")
    with pytest.raises(UnreachableNode, match="island"):
        g.delay()
    assert durable.list() == []


BROKEN_APP = """
from celery import Celery
from pydantic import BaseModel
from celery_durable import Durable

app = Celery("broken", broker="memory://")
durable = Durable(app, database_url="sqlite:///:memory:")


class S(BaseModel):
    n: int = 0


g = durable.graph("shape", state=S)
g.node(lambda s: None, name="a")
g.node(lambda s: None, name="island")
g.entry("a")
"""


def test_a_worker_refuses_to_start_on_a_broken_graph(tmp_path: Path) -> None:
    (tmp_path / "broken_app.py").write_text(BROKEN_APP)
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "broken_app", "worker", "-P", "solo"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        timeout=60,
    )
    assert result.returncode != 0
    assert "celery-durable: Graph 'shape': node(s) island cannot be reached" in result.stderr


MISSPELT_BREAKER_APP = """
from celery import Celery
from pydantic import BaseModel
from celery_durable import Durable

app = Celery("misspelt", broker="memory://")
durable = Durable(app, database_url="sqlite:///:memory:")
durable.breaker("payments")


class S(BaseModel):
    n: int = 0


g = durable.graph("pay", state=S)
g.node(lambda s: None, name="charge", breaker="payment")
g.entry("charge")
"""


def test_a_worker_refuses_to_start_on_a_misspelt_breaker(tmp_path: Path) -> None:
    (tmp_path / "misspelt_app.py").write_text(MISSPELT_BREAKER_APP)
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "misspelt_app", "worker", "-P", "solo"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        timeout=60,
    )
    assert result.returncode != 0
    assert (
        "celery-durable: Node pay.charge uses circuit breaker 'payment', which is not declared "
        "(declared: payments)" in result.stderr
    )


def test_a_run_of_a_node_with_an_undeclared_breaker_is_refused_storing_nothing(
    durable: Durable,
) -> None:
    durable.breaker("payments")
    g = durable.graph("pay", state=S)
    g.node(lambda s: None, name="charge", breaker="payment")
    g.entry("charge")
    with pytest.raises(UndeclaredName, match=re.escape("durable.breaker('payment', ...)")):
        g.delay()
    assert durable.list() == []


def test_a_breaker_undeclared_where_a_visit_runs_fails_its_run_at_once(
    durable: Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = durable.graph("pay_later", state=S)
    g.node(lambda s: None, name="charge", breaker="payments")
    g.entry("charge")
    # Past the checks of start and worker start (a breaker dropped since): the visit fails
    # for good, not as a poison message after ten redeliveries.
    monkeypatch.setattr(durable.runtime.flow, "check", lambda definitions: None)
    run = g.delay()
    with in_process_worker(durable), pytest.raises(ExecutionFailed) as failed:
        run.wait(timeout=10)
    assert failed.value.error["type"] == "UnknownBreaker"
    assert len([cp for cp in run.history() if cp.kind == "failure"]) <= 1


def test_one_rate_limit_name_cannot_carry_two_rates(durable: Durable) -> None:
    g = durable.graph("rates", state=S)
    g.node(lambda s: None, name="a", rate=RateLimit("api", 20))
    g.node(lambda s: None, name="b", rate=RateLimit("api", 10))
    g.entry("a")
    g.edge("a", "b")
    with pytest.raises(
        InvalidNodeOption, match=re.escape("20 per 1s on rates.a and 10 per 1s on rates.b")
    ):
        durable.runtime.flow.check([g.definition()])


def test_a_node_queue_the_app_does_not_declare_is_refused_where_none_are_created(
    durable: Durable,
) -> None:
    g = durable.graph("queued", state=S)
    g.node(lambda s: None, name="a", queue="gpus")
    g.entry("a")
    check_queues(durable.app, [g.definition()])  # Celery creates missing queues by default
    durable.app.conf.task_create_missing_queues = False
    durable.app.conf.task_queues = [Queue("gpu")]
    with pytest.raises(UndeclaredName, match=r"uses queue 'gpus'.*declared: gpu"):
        check_queues(durable.app, [g.definition()])


def test_branch_without_paths_counts_every_node_reachable(durable: Durable) -> None:
    g = durable.graph("open_branch", state=S)
    g.node(lambda s: None, name="a")
    g.node(lambda s: None, name="b")
    g.entry("a")
    g.branch("a", lambda s: "b")
    assert len(g.validate()) == 64


def test_node_options_are_checked_when_applied(durable: Durable) -> None:
    g = durable.graph("opts", state=S)
    with pytest.raises(InvalidNodeOption, match="unknown node option"):
        g.node(retries=3)
    with pytest.raises(InvalidNodeOption, match="RetryPolicy"):
        g.node(retry=3)
    with pytest.raises(InvalidNodeOption, match="timeout"):
        g.node(timeout=0)
    with pytest.raises(InvalidNodeOption, match="parameters"):
        g.node(lambda a, b, c: None)


def test_state_must_be_a_pydantic_model_and_declared_versions_unique(durable: Durable) -> None:
    with pytest.raises(GraphDefinitionError, match="BaseModel"):
        durable.graph("bad", state=dict)  # type: ignore[arg-type]
    durable.graph("taken", state=S, version="1")
    with pytest.raises(DuplicateVersion, match="already has a version '1'"):
        durable.graph("taken", state=S, version="1")
    with pytest.raises(GraphDefinitionError, match="version= takes"):
        durable.graph("taken", state=S, version="1 beta")


def test_fingerprint_changes_with_the_shape(durable: Durable) -> None:
    g = durable.graph("fp", state=S)
    g.node(lambda s: None, name="a")
    g.node(lambda s: None, name="b")
    g.entry("a")
    g.edge("a", "b")
    before = g.validate()
    g.node(lambda s: None, name="c")
    g.edge("b", "c")
    assert g.validate() != before


def test_nodes_are_registered_tasks_with_safe_delivery(durable: Durable) -> None:
    g = durable.graph("tasks", state=S)

    @g.node(timeout=5)
    def work(s: S) -> None:
        """Does the work."""

    task = durable.app.tasks["durable.tasks.work"]
    assert (task.acks_late, task.reject_on_worker_lost, task.serializer) == (True, True, "json")
    # The timeout is the engine's, per node (tasks/deadline.py): none on the Celery task.
    assert (task.soft_time_limit, task.time_limit) == (None, None)
    assert work.definition.timeout == 5
    assert work(S()) is None  # a node stays callable as the function it wraps
    assert work.__doc__ == "Does the work."


def test_compensation_registers_its_own_task(durable: Durable) -> None:
    saga = durable.saga("trip", state=S)

    @saga.step
    def book(s: S) -> None: ...

    @book.compensation
    def unbook(s: S) -> None: ...

    assert "durable.trip.book.compensate" in durable.app.tasks
    with pytest.raises(GraphDefinitionError, match="already has a compensation"):
        book.compensation(lambda s: None)


def test_saga_steps_chain_in_declaration_order(durable: Durable) -> None:
    saga = durable.saga("steps", state=S)
    for name in ("one", "two", "three"):
        saga.node(lambda s: None, name=name)
    assert saga.entry_node == "one"
    assert saga.edges == {"one": ["two"], "two": ["three"]}
    assert saga.on_failure == "compensate"


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("task_serializer", "pickle"),
        ("result_serializer", "pickle"),
        ("accept_content", ["json", "pickle"]),
    ],
)
def test_an_app_that_insists_on_pickle_is_refused(setting: str, value: object) -> None:
    app = Celery("pickly", broker="memory://localhost/")
    app.conf[setting] = value
    with pytest.raises(UnsafeSerializer, match=setting):
        Durable(app, database_url="sqlite://")


def test_the_app_is_pinned_to_json() -> None:
    app = Celery("plain", broker="memory://localhost/")
    Durable(app, database_url="sqlite://")
    assert (app.conf.task_serializer, app.conf.accept_content) == ("json", ["json"])


def test_retry_policy_validates_itself() -> None:
    with pytest.raises(InvalidNodeOption, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(InvalidNodeOption, match="max_delay"):
        RetryPolicy(initial_delay=10, max_delay=1)
    with pytest.raises(InvalidNodeOption, match="exception classes"):
        RetryPolicy(retry_on=("not an exception",))  # type: ignore[arg-type]


def test_beat_can_send_the_maintenance_tasks(durable: Durable) -> None:
    for name in ("durable.recover", "durable.prune"):
        assert name in durable.app.conf.beat_schedule
        durable.app.tasks[name].apply_async()  # what beat does; a bad signature raises here


# -- the frozen definition the engine reads ---------------------------------------------------


def _chain(durable: Durable, name: str, *nodes: str) -> Graph:
    g = durable.graph(name, state=S)
    for node in nodes:
        g.node(lambda s: None, name=node)
    g.entry(nodes[0])
    for a, b in itertools.pairwise(nodes):
        g.edge(a, b)
    return g


def test_a_definition_cannot_be_changed(durable: Durable) -> None:
    definition = _chain(durable, "frozen", "a", "b").definition()
    with pytest.raises(dataclasses.FrozenInstanceError):
        definition.entry_node = "b"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        definition.nodes["a"].timeout = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        definition.edges["b"] = ("a",)  # type: ignore[index]
    with pytest.raises(TypeError):
        definition.nodes["c"] = definition.nodes["a"]  # type: ignore[index]


def test_a_definition_is_taken_once_until_the_graph_changes(durable: Durable) -> None:
    g = _chain(durable, "cached", "a", "b")
    first = g.definition()
    assert g.definition() is first
    assert g.validate() == first.fingerprint == first.validate()


def test_a_node_added_later_is_in_the_next_definition_not_the_last(durable: Durable) -> None:
    g = _chain(durable, "grows", "a", "b")
    before = g.definition()
    g.node(lambda s: None, name="c")
    g.edge("b", "c")
    after = g.definition()
    assert list(after.nodes) == ["a", "b", "c"]
    assert after.edges["b"] == ("c",)
    assert list(before.nodes) == ["a", "b"]
    assert "b" not in before.edges
    assert after.fingerprint != before.fingerprint


def test_a_compensation_added_later_is_in_the_next_definition(durable: Durable) -> None:
    saga = durable.saga("undo_later", state=S)

    @saga.step
    def book(s: S) -> None: ...

    before = saga.definition()
    policy = RetryPolicy(max_attempts=3)

    @book.compensation(retry=policy)
    def unbook(s: S) -> None: ...

    after = saga.definition()
    assert before.nodes["book"].compensator is None
    assert after.nodes["book"].compensator is unbook
    assert after.nodes["book"].compensation_retry is policy
    assert after.nodes["book"].compensation_task_name == "durable.undo_later.book.compensate"
    assert book.definition is after.nodes["book"]


def test_an_upgrade_hook_added_later_is_in_the_next_definition(durable: Durable) -> None:
    g = _chain(durable, "upgraded", "a")
    assert g.definition().upgrader is None

    @g.upgrade
    def up(old: dict[str, object]) -> dict[str, object]:
        return old

    assert g.definition().upgrader is up


def test_a_definition_carries_the_node_options(durable: Durable) -> None:
    g = durable.graph("options", state=S)
    policy = RetryPolicy(max_attempts=2)

    @g.node(retry=policy, timeout=3, queue="slow", interrupt_before=True, max_visits=5)
    def work(s: S, ctx: object) -> None: ...

    g.entry(work)
    node = g.definition().nodes["work"]
    assert (node.retry, node.timeout, node.queue) == (policy, 3, "slow")
    assert (node.interrupt_before, node.interrupt_after, node.max_visits) == (True, False, 5)
    assert (node.fn, node.wants_context, node.task_name) == (work.fn, True, "durable.options.work")


def _pinned_graphs(durable: Durable) -> dict[str, Graph]:
    plain = durable.graph("fp_plain", state=S)
    for name in ("a", "b", "c", "d"):
        plain.node(lambda s: None, name=name)
    plain.entry("a")
    plain.edge("a", ["b", "c"])
    plain.edge(["b", "c"], "d")
    branch = durable.graph("fp_branch", state=S, on_failure="intervene")
    for name in ("start", "left", "right", "end"):
        branch.node(lambda s: None, name=name)
    branch.entry("start")
    branch.branch("start", lambda s: "left", ["left", "right"])
    branch.edge("left", "end")
    branch.branch("right", lambda s: None)
    saga = durable.saga("fp_saga", state=S)
    for name in ("one", "two", "three"):
        saga.step(lambda s: None, name=name)
    return {"plain": plain, "branch": branch, "saga": saga}


def test_the_fingerprint_is_the_one_runs_in_the_database_store(durable: Durable) -> None:
    # A graph without version= is versioned by its fingerprint: a different fingerprint for
    # the same graph would pin every new run to a version no worker of the old code has.
    # (Runs started before versions, schema 0006, carry none and run on the newest.)
    pinned = {
        "plain": "3524a22b10242383448f9f2db73754ab15d1440a792a24111fe8b92f69478a67",
        "branch": "ba065eff644bad413136a04da831fc268614c3564845cc2d498feb08e213aee2",
        "saga": "c95638293dcbe283c6de56faa8bdeb77c5558d1b629f78b2af30bcebe3f9e81e",
    }
    graphs = _pinned_graphs(durable)
    assert {name: g.validate() for name, g in graphs.items()} == pinned
    assert {name: g.definition().fingerprint for name, g in graphs.items()} == pinned


def test_definitions_are_a_live_view_of_the_graphs(durable: Durable) -> None:
    graphs: dict[str, list[Graph]] = {}
    definitions = Definitions(graphs)
    assert "late" not in definitions
    g = _chain(durable, "late", "a")
    graphs["late"] = [g]
    taken = definitions["late"]
    assert isinstance(taken, GraphDefinition)
    assert definitions["late"] is taken
    assert list(definitions) == ["late"] and len(definitions) == 1
    g.node(lambda s: None, name="b")
    g.edge("a", "b")
    assert list(definitions["late"].nodes) == ["a", "b"]
    assert definitions.get("missing") is None


def test_membership_does_not_check_a_broken_graph(durable: Durable) -> None:
    broken = durable.graph("no_entry", state=S)
    broken.node(lambda s: None, name="a")
    definitions = Definitions({"no_entry": [broken]})
    assert "no_entry" in definitions
    with pytest.raises(NoEntry):
        definitions["no_entry"]
