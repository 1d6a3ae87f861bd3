"""State evolution: a deploy changes the state model under runs in flight.

Each "deploy" is a fresh Durable on the same database whose graph has the same name and a new
model, as a rolling deploy gives the workers. A run parked at an approval crosses the deploy.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from celery_durable import Durable, NeedsIntervention, StateSchemaMismatch, Status
from celery_durable.signals import intervention_required
from celery_durable.testing import embedded_app, in_process_worker
from tests.waiting import wait_for


class OrderV1(BaseModel):
    amount: int = 0
    charged: bool = False


class OrderV2(BaseModel):
    """The deploy: amounts in cents with a currency, which old runs do not have."""

    amount_cents: int
    currency: str
    charged: bool = False


Deploy = Callable[..., Durable]


@pytest.fixture
def deploy(database_url: str) -> Iterator[Deploy]:
    """``deploy(model, upgrade=None, saga=False)``: the ``order`` graph as built by one deploy."""
    made: list[Durable] = []

    def build(model: type[BaseModel], upgrade: Any = None, saga: bool = False) -> Durable:
        durable = Durable(embedded_app(f"deploy-{uuid.uuid4().hex[:6]}"), database_url)
        durable.migrate()
        g = durable.saga("order", state=model) if saga else durable.graph("order", state=model)
        if upgrade is not None:
            g.upgrade(upgrade)

        @g.node
        def quote(state: Any) -> None:
            return None

        @g.node(interrupt_before=True)
        def charge(state: Any) -> dict[str, bool]:
            return {"charged": True}

        if not saga:
            g.entry(quote)
            g.edge(quote, charge)
        made.append(durable)
        return durable

    yield build
    for durable in made:
        durable.db.dispose()


def _park(durable: Durable) -> str:
    """Start a run under ``durable`` and leave it waiting for approval before ``charge``."""
    with in_process_worker(durable):
        run = durable.graphs["order"].delay(amount=12)
        wait_for(lambda: run.status == Status.WAITING, timeout=10, what="the approval")
    return run.id


def test_a_state_the_new_model_refuses_stops_the_run_for_an_operator(deploy: Deploy) -> None:
    run_id = _park(deploy(OrderV1))
    v2 = deploy(OrderV2)
    signalled: list[str] = []

    def record(sender: Any = None, **kw: Any) -> None:
        if sender is v2:
            signalled.append(kw["step"])

    intervention_required.connect(record)
    try:
        with in_process_worker(v2):
            run = v2.get(run_id)
            run.resume(by="ops")
            with pytest.raises(NeedsIntervention):
                run.wait(timeout=10)
    finally:
        intervention_required.disconnect(record)
    error = run.error
    assert run.status == Status.NEEDS_INTERVENTION and error is not None
    assert error["type"] == "StateSchemaMismatch" and error["attempt"] == 1
    assert "amount_cents" in error["message"] and "currency" in error["message"]
    assert "upgrade hook" in error["message"]
    assert signalled == ["charge"]
    with pytest.raises(StateSchemaMismatch, match="currency"):
        _ = run.state  # reading it as the new model says the same, by name


def test_an_upgrade_hook_migrates_runs_in_flight(deploy: Deploy) -> None:
    run_id = _park(deploy(OrderV1))
    seen: list[dict[str, Any]] = []

    def upgrade(old: dict[str, Any]) -> dict[str, Any]:
        seen.append(dict(old))
        return {
            "amount_cents": old["amount"] * 100,
            "currency": "EUR",
            "charged": old["charged"],
        }

    v2 = deploy(OrderV2, upgrade=upgrade)
    with in_process_worker(v2):
        run = v2.get(run_id)
        run.resume(by="ops")
        final = run.wait(timeout=10)
    assert final.model_dump() == {"amount_cents": 1200, "currency": "EUR", "charged": True}
    assert seen[0] == {"amount": 12, "charged": False}
    # The migrated state is what was committed: the stored row is the new shape.
    assert run.refresh().state == {"amount_cents": 1200, "currency": "EUR", "charged": True}


def test_a_run_stopped_by_a_mismatch_goes_on_after_the_fix_is_deployed(deploy: Deploy) -> None:
    run_id = _park(deploy(OrderV1))
    v2 = deploy(OrderV2)
    with in_process_worker(v2):
        run = v2.get(run_id)
        run.resume(by="ops")
        with pytest.raises(NeedsIntervention):
            run.wait(timeout=10)
    fixed = deploy(OrderV2, upgrade=lambda old: {"amount_cents": 1, "currency": "USD"})
    with in_process_worker(fixed):
        run = fixed.get(run_id)
        run.retry(by="ops", reason="upgrade hook deployed")
        assert run.wait(timeout=10).model_dump() == {
            "amount_cents": 1,
            "currency": "USD",
            "charged": True,
        }


def test_a_saga_with_a_stale_state_stops_instead_of_compensating(deploy: Deploy) -> None:
    run_id = _park(deploy(OrderV1, saga=True))
    v2 = deploy(OrderV2, saga=True)
    with in_process_worker(v2):
        run = v2.get(run_id)
        run.resume(by="ops")
        with pytest.raises(NeedsIntervention):
            run.wait(timeout=10)
    assert run.error is not None and run.error["type"] == "StateSchemaMismatch"
    assert not [cp for cp in run.history() if cp.kind == "compensation"]


def test_an_upgrade_hook_whose_result_does_not_fit_says_so(deploy: Deploy) -> None:
    run_id = _park(deploy(OrderV1))
    v2 = deploy(OrderV2, upgrade=lambda old: {"amount_cents": old["amount"]})
    with in_process_worker(v2):
        run = v2.get(run_id)
        run.resume(by="ops")
        with pytest.raises(NeedsIntervention):
            run.wait(timeout=10)
    assert run.error is not None
    assert "after the graph's upgrade hook" in run.error["message"]
    assert "currency" in run.error["message"]
