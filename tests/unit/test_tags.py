"""Tags, on SQLite and PostgreSQL: given at start by every way to start a run, checked before
anything is stored, written once with the run, inherited by its children unless they have
their own, kept by a fork, gone with the run; runs found by every pair given, newest first,
a keyset page at a time, and selected by them in bulk."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import text

from celery_durable import Context, Durable, Graph, Saga, Status
from celery_durable.errors import InvalidTags
from celery_durable.model.tags import MAX_TAGS, parsed, spelled
from celery_durable.testing import embedded_app


class Order(BaseModel):
    n: int = 0


@pytest.fixture
def durable(database_url: str) -> Iterator[Durable]:
    """This module's runs, on SQLite and on PostgreSQL (the unit conftest's is SQLite only)."""
    durable = Durable(embedded_app(f"tags-{uuid.uuid4().hex[:8]}"), database_url)
    durable.migrate()
    yield durable
    durable.db.dispose()


@pytest.fixture
def order(durable: Durable) -> Graph:
    g = durable.graph("order", state=Order)

    @g.node
    def take(state: Order) -> dict[str, int]:
        return {"n": state.n + 1}

    g.entry(take)
    return g


def tag_rows(durable: Durable, execution_id: str | None = None) -> list[tuple[str, str, str]]:
    """The stored rows, as the table has them."""
    where = "" if execution_id is None else "WHERE execution_id = :id"
    query = f"SELECT execution_id, key, value FROM durable_tags {where} ORDER BY 1, 2"
    with durable.db.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(query), {"id": execution_id})]


def ids(runs: list[Any]) -> list[str]:
    return [run.id for run in runs]


# -- at start ---------------------------------------------------------------------------------


def test_every_way_to_start_a_run_takes_tags_and_the_run_has_them(
    durable: Durable, order: Graph
) -> None:
    saga = durable.saga("refund", state=Order)

    @saga.step
    def pay_back(state: Order) -> None:
        return None

    by_graph = order.apply_async({"n": 1}, execution_id="o-1", tags={"customer": "c-42"})
    by_name = durable.start("order", {"n": 2}, tags={"customer": "c-7", "env": "prod"})
    by_saga = saga.apply_async({"n": 3}, tags={"customer": "c-42", "reason": "late"})
    untagged = order.delay(n=4)

    assert by_graph.tags == {"customer": "c-42"}
    assert durable.get(by_name.id).tags == {"customer": "c-7", "env": "prod"}
    assert durable.get(by_saga.id).tags == {"customer": "c-42", "reason": "late"}
    assert durable.get(untagged.id).tags == {}
    assert tag_rows(durable, "o-1") == [("o-1", "customer", "c-42")]


def test_starting_the_same_id_twice_is_one_run_with_the_tags_it_started_with(
    durable: Durable, order: Graph
) -> None:
    first = order.apply_async({"n": 1}, execution_id="o-1", tags={"customer": "c-42", "env": "a"})
    again = order.apply_async({"n": 1}, execution_id="o-1", tags={"customer": "c-99"})

    assert again.id == first.id and again.tags == {"customer": "c-42", "env": "a"}
    assert tag_rows(durable) == [("o-1", "customer", "c-42"), ("o-1", "env", "a")]
    assert ids(durable.list(tags={"customer": "c-99"})) == []


def test_bad_tags_are_refused_saying_the_limit_and_nothing_is_stored(
    durable: Durable, order: Graph
) -> None:
    cases: list[tuple[object, str]] = [
        (["customer", "c-42"], "is not a dict of strings"),
        ({"customer": 42}, "is not a pair of strings"),
        ({7: "seven"}, "is not a pair of strings"),
        ({"": "x"}, "is not 1 to 64 characters without '='"),
        ({"k" * 65: "x"}, "is not 1 to 64 characters without '='"),
        ({"a=b": "x"}, "is not 1 to 64 characters without '='"),
        ({"note": "v" * 201}, "has 201 characters, at most 200 are kept"),
        ({f"k{i}": "v" for i in range(MAX_TAGS + 1)}, "17 tags given, at most 16 are kept"),
        ({"customer": "c\x0042"}, "NUL character"),
    ]
    for tags, problem in cases:
        with pytest.raises(InvalidTags) as refused:
            order.apply_async({"n": 1}, execution_id="o-bad", tags=tags)  # type: ignore[arg-type]
        assert problem in str(refused.value)
        assert "at most 16 tags" in str(refused.value)  # the rule, with its limits
        assert "Nothing was stored or sent" in str(refused.value)
    # At the limits exactly, tags are kept.
    most = {f"k{i:02d}" + "k" * 61: "v" * 200 for i in range(MAX_TAGS)}
    order.apply_async({"n": 1}, execution_id="o-most", tags=most)

    assert ids(durable.list()) == ["o-most"]  # no bad start stored anything
    assert durable.get("o-most").tags == most
    with pytest.raises(InvalidTags, match="is not a pair of strings"):
        durable.list(tags={"customer": None})  # type: ignore[dict-item]


def test_the_cli_spelling_is_parsed_and_a_bad_one_says_how_to_write_it() -> None:
    assert parsed(["customer=c-42", "env=prod", "url=a=b", "customer=c-42"]) == {
        "customer": "c-42",
        "env": "prod",
        "url": "a=b",
    }
    assert spelled({"env": "prod", "customer": "c-42"}) == ["customer=c-42", "env=prod"]
    with pytest.raises(InvalidTags, match="'customer' is not a tag: write KEY=VALUE"):
        parsed(["customer"])
    with pytest.raises(InvalidTags, match="'=c-42' is not a tag"):
        parsed(["=c-42"])
    with pytest.raises(InvalidTags, match=r"match no run .* give customer once"):
        parsed(["customer=a", "customer=b"])


# -- finding runs -----------------------------------------------------------------------------


def test_list_finds_the_runs_carrying_every_pair_newest_first_a_keyset_page_at_a_time(
    durable: Durable, order: Graph
) -> None:
    other = durable.graph("other", state=Order)

    @other.node
    def noop(state: Order) -> None:
        return None

    other.entry(noop)
    started = [
        order.apply_async(execution_id="r0", tags={"customer": "c-42", "env": "prod"}),
        order.apply_async(execution_id="r1", tags={"customer": "c-7", "env": "prod"}),
        order.apply_async(execution_id="r2", tags={"customer": "c-42", "env": "test"}),
        other.apply_async(execution_id="r3", tags={"customer": "c-42", "env": "prod"}),
        order.apply_async(execution_id="r4", tags={"customer": "c-42"}),
        order.apply_async(execution_id="r5"),
        order.apply_async(execution_id="r6", tags={"customer": "c-42", "env": "prod"}),
    ]
    assert len(started) == 7

    assert ids(durable.list(tags={"customer": "c-42"})) == ["r6", "r4", "r3", "r2", "r0"]
    both = {"customer": "c-42", "env": "prod"}
    assert ids(durable.list(tags=both)) == ["r6", "r3", "r0"]
    assert ids(durable.list(tags={"env": "prod", "customer": "c-7"})) == ["r1"]
    assert ids(durable.list(tags={"customer": "c-404"})) == []
    assert ids(durable.list(tags={"customer": "c-42"}, graph="other")) == ["r3"]
    assert ids(durable.list(tags=both, id_prefix="r0")) == ["r0"]
    assert ids(durable.list(tags=both, status=Status.SUCCEEDED)) == []
    assert ids(durable.list(tags={})) == [f"r{i}" for i in range(6, -1, -1)]  # {}: no filter
    since = durable.get("r3").record.created_at
    assert ids(durable.list(tags={"customer": "c-42"}, since=since)) == ["r6", "r4", "r3"]
    # Keyset paging, two at a time: every run once, in order.
    seen: list[str] = []
    before = None
    while page := durable.list(tags={"customer": "c-42"}, limit=2, before=before):
        seen += ids(page)
        before = (page[-1].record.created_at, page[-1].id)
    assert seen == ["r6", "r4", "r3", "r2", "r0"]
    # Each listed run comes with its own tags.
    assert {run.id: run.tags for run in durable.list(tags=both)}["r3"] == both


def test_a_bulk_operation_selects_by_tags(durable: Durable, order: Graph) -> None:
    order.apply_async(execution_id="a", tags={"customer": "c-42"})
    order.apply_async(execution_id="b", tags={"customer": "c-7"})
    order.apply_async(execution_id="c", tags={"customer": "c-42", "env": "prod"})

    report = durable.bulk("cancel", tags={"customer": "c-42"}, dry_run=True)
    assert sorted(report.done) == ["a", "c"] and report.refused == {}
    report = durable.bulk("cancel", tags={"customer": "c-42", "env": "prod"}, by="ops")
    assert report.done == ["c"]
    assert durable.get("c").status == Status.CANCELLED
    assert durable.get("a").status != Status.CANCELLED


# -- children, forks, deletion ----------------------------------------------------------------


def test_children_carry_the_parents_tags_unless_given_their_own(
    durable: Durable, order: Graph, worker: Callable[[], AbstractContextManager[object]]
) -> None:
    parent = durable.graph("parent", state=Order)

    @parent.node
    def fan(state: Order, ctx: Context) -> dict[str, int]:
        inherited = ctx.start_child(order, {"n": 1})
        own = ctx.start_child(order, {"n": 2}, tags={"customer": "c-42", "part": "own"})
        none = ctx.start_child(order, {"n": 3}, tags={})
        for child in (inherited, own, none):
            ctx.wait_child(child)
        ctx.map(order, [{"n": 4}])
        ctx.map(order, [{"n": 5}], tags={"batch": "b-1"})
        return {"n": 9}

    parent.entry(fan)
    with worker():
        run = parent.apply_async(execution_id="p", tags={"customer": "c-42", "env": "prod"})
        run.wait(timeout=30)

    children = {child.id: child.tags for child in run.children()}
    inherited = {"customer": "c-42", "env": "prod"}
    assert children == {
        "p.fan.1.c0": inherited,
        "p.fan.1.c1": {"customer": "c-42", "part": "own"},
        "p.fan.1.c2": {},
        "p.fan.1.m3.000000": inherited,
        "p.fan.1.m4.000000": {"batch": "b-1"},
    }
    # The parent ran its node twice or more (each wait): the children, and their tags, once.
    assert len(tag_rows(durable)) == 2 + 2 + 2 + 2 + 1
    assert ids(durable.list(tags=inherited)) == ["p.fan.1.m3.000000", "p.fan.1.c0", "p"]


def test_a_fork_keeps_the_tags_and_a_deleted_run_takes_its_tags_with_it(
    durable: Durable, order: Graph, worker: Callable[[], AbstractContextManager[object]]
) -> None:
    with worker():
        run = order.apply_async({"n": 1}, execution_id="o-1", tags={"customer": "c-42"})
        run.wait(timeout=10)
        fork = run.fork(0, execution_id="o-1-again")
        fork.wait(timeout=10)
    assert fork.tags == {"customer": "c-42"}
    assert ids(durable.list(tags={"customer": "c-42"})) == ["o-1-again", "o-1"]

    removed = durable.prune(older_than=timedelta(0))
    assert removed.removed["succeeded"] == 2
    assert tag_rows(durable) == []
    assert ids(durable.list(tags={"customer": "c-42"})) == []


def test_a_saga_started_with_tags_keeps_them_through_its_run(
    durable: Durable, worker: Callable[[], AbstractContextManager[object]]
) -> None:
    saga: Saga = durable.saga("trip", state=Order)

    @saga.step
    def book(state: Order) -> dict[str, int]:
        return {"n": 1}

    with worker():
        run = saga.apply_async(tags={"customer": "c-42"})
        run.wait(timeout=10)
    (found,) = durable.list(tags={"customer": "c-42"}, status=Status.SUCCEEDED)
    assert found.id == run.id and found.tags == {"customer": "c-42"}


def test_a_lookup_by_several_tags_is_planned_for_its_values_on_postgresql(pg_url: str) -> None:
    """Which pair's index to walk depends on the values (a customer's ten runs, not prod's
    third of them): a statement psycopg prepared could run on one generic plan for any."""
    durable = Durable(embedded_app(f"tags-{uuid.uuid4().hex[:8]}"), pg_url)
    durable.migrate()
    try:
        g = durable.graph("order", state=Order)

        @g.node
        def take(state: Order) -> None:
            return None

        g.entry(take)
        g.apply_async(execution_id="o-1", tags={"customer": "c-42", "env": "prod"})
        for _ in range(8):  # psycopg prepares what a connection runs five times
            assert ids(durable.list(tags={"customer": "c-42", "env": "prod"})) == ["o-1"]
            assert ids(durable.list()) == ["o-1"]
        with durable.db.read() as conn:
            prepared = [row[0] for row in conn.execute(text(PREPARED))]
        assert any("durable_executions" in sql for sql in prepared)  # the plain list was
        assert not any(" AS t1 " in sql for sql in prepared)
    finally:
        durable.db.dispose()


PREPARED = "SELECT statement FROM pg_prepared_statements WHERE statement NOT LIKE '%pg_prepared%'"
