"""celery-durable on pytest-celery's classic fixtures, with pytest-celery's plugin loaded and no
Docker engine: its ``celery_app`` (configured by ``celery_config``) under a durable graph, its
in-process ``celery_worker`` running the nodes.

pytest-celery 1.x's plugin replaces the classic ``celery_worker`` with a worker in a Docker
container; importing the classic one into the test module (or conftest.py) brings it back.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from celery import Celery
from celery.contrib import pytest as classic
from pydantic import BaseModel

from celery_durable import Durable, Graph
from celery_durable.testing import assert_committed_once, assert_status

celery_worker = classic.celery_worker  # the in-process one, over pytest-celery's Docker one
QUEUE = f"pytest-celery-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def celery_config() -> Mapping[str, Any]:
    # The in-memory transport polls every second by default; a queue of its own keeps other
    # tests' apps (same process, same in-memory broker) out of this one's way.
    return {
        "broker_transport_options": {"polling_interval": 0.01},
        "task_default_queue": QUEUE,
    }


@pytest.fixture
def durable_celery_app(celery_app: Celery) -> Celery:
    return celery_app


class Tally(BaseModel):
    n: int = 0


@pytest.fixture
def tally(durable_embedded: Durable) -> Graph[Tally]:
    """Defined before ``celery_worker`` starts: a worker knows the tasks registered then."""
    g = durable_embedded.graph("tally", state=Tally)

    @g.node
    def double(state: Tally) -> dict[str, int]:
        return {"n": state.n * 2}

    @g.node
    def add_one(state: Tally) -> dict[str, int]:
        return {"n": state.n + 1}

    g.entry(double)
    g.edge(double, add_one)
    return g


def test_pytest_celery_is_loaded(request: pytest.FixtureRequest) -> None:
    assert request.config.pluginmanager.has_plugin("celery")


def test_a_graph_runs_on_the_classic_celery_app_and_worker(
    durable_embedded: Durable, tally: Graph[Tally], celery_app: Celery, celery_worker: Any
) -> None:
    assert durable_embedded.app is celery_app
    assert celery_app.conf.task_default_queue == QUEUE
    run = tally.delay(n=5)
    assert run.wait(timeout=10).n == 11
    assert_status(run, "succeeded")
    assert_committed_once(run, ["double", "add_one"])


@pytest.mark.celery(task_default_queue=f"{QUEUE}-marked")
def test_the_celery_mark_configures_the_durable_app(
    tally: Graph[Tally], celery_app: Celery, celery_worker: Any
) -> None:
    assert celery_app.conf.task_default_queue == f"{QUEUE}-marked"
    assert tally.delay(n=1).wait(timeout=10).n == 3
