"""Node messages go out on a producer each thread holds; when that path breaks, send_task's."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from celery import Celery
from celery.signals import before_task_publish, task_prerun

from celery_durable import Durable, Status
from celery_durable.engine.base import Base
from celery_durable.model.cursor import Cursor
from celery_durable.model.records import Kind
from celery_durable.testing import in_process_worker
from tests.unit.test_inline import NODES, chain, messages


def test_messages_say_which_task_sent_them(app: Celery, sqlite_url: str) -> None:
    durable = Durable(app, database_url=sqlite_url, inline_nodes=0)
    durable.migrate()
    g = chain(durable)
    seen: dict[str, tuple[str, str | None, str | None]] = {}
    published: list[str] = []

    def record(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            request = sender.request
            seen[sender.name.rsplit(".", 1)[1]] = (request.id, request.parent_id, request.root_id)

    def count(sender: Any = None, **_: Any) -> None:
        published.append(str(sender))

    task_prerun.connect(record, weak=False)
    before_task_publish.connect(count, weak=False)
    try:
        with in_process_worker(durable):
            run = g.delay()
            assert run.wait(timeout=10).trail == list(NODES)
    finally:
        task_prerun.disconnect(record)
        before_task_publish.disconnect(count)
    assert seen["a"][0] == f"{run.id}.a.1.1"
    for sent, by in zip(NODES[1:], NODES, strict=False):
        assert seen[sent][1] == seen[by][0]  # parent: the node that sent it
        assert seen[sent][2] == seen["a"][0]  # root: the run's first task
    assert len([p for p in published if p.startswith("durable.chain.")]) == 5
    durable.db.dispose()


def test_a_broken_held_connection_falls_back_to_send_task(app: Celery, sqlite_url: str) -> None:
    durable = Durable(app, database_url=sqlite_url, inline_nodes=0)
    durable.migrate()
    g = chain(durable)
    dispatcher = durable.runtime.dispatcher
    with in_process_worker(durable):
        assert g.delay().wait(timeout=10).trail == list(NODES)
        held = dispatcher.producer  # this (the client's) thread's connection
        broken = held.connection
        assert broken is not None
        broken.close()  # as when the broker went away under it
        assert g.delay().wait(timeout=10).trail == list(NODES)
        assert held.connection is None  # dropped, sent by send_task
        assert g.delay().wait(timeout=10).trail == list(NODES)
        assert held.connection is not None and held.connection is not broken
    durable.db.dispose()


def test_a_message_built_for_a_commit_that_lost_is_never_sent(app: Celery, sqlite_url: str) -> None:
    """A node's messages are built while its commit is in flight. Here a hand patch lands
    first: b's commit loses, rebases and commits; c's message is built again for it, and only
    that one goes out."""
    durable = Durable(app, database_url=sqlite_url, inline_nodes=0)
    durable.migrate()
    g = chain(durable)
    dispatcher = durable.runtime.dispatcher
    prepare = dispatcher.prepare
    built: list[tuple[str, int]] = []

    def patch_first(graph: str, node: str, visit: int, eid: str, base: Any, **k: Any) -> Any:
        if node == "c" and not any(name == "c" for name, _ in built):
            durable.get(eid).update_state({"trail": ["patched"]}, reason="lands before b's")
        built.append((node, base.version))
        return prepare(graph, node, visit, eid, base, **k)

    sent: Counter[str] = Counter()
    versions: dict[str, int] = {}

    def count(sender: Any = None, headers: Any = None, body: Any = None, **_: Any) -> None:
        sent[headers["id"]] += 1
        versions[headers["id"]] = body[1]["version"]

    dispatcher.prepare = patch_first  # type: ignore[method-assign]
    before_task_publish.connect(count, weak=False)
    try:
        with in_process_worker(durable):
            run = g.delay()
            assert run.wait(timeout=10).trail == ["a", "b", "c", "d", "e"]
    finally:
        before_task_publish.disconnect(count)
    kinds = [cp.kind for cp in durable.runtime.store.list(run.id)]
    assert kinds.count(Kind.MANUAL) == 1  # the patch landed between b's two tries
    assert [version for name, version in built if name == "c"] == [2, 3]  # once per try
    assert sent[f"{run.id}.c.1.1"] == 1
    assert versions[f"{run.id}.c.1.1"] == 3  # the message of the commit that won
    assert all(count == 1 for count in sent.values())
    durable.db.dispose()


def by_version(
    name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any
) -> dict[str, str] | None:
    """task_routes that read the message: a chain visit on version 3 or later goes to "late"."""
    if name.startswith("durable.chain.") and kwargs.get("version", 0) >= 3:
        return {"queue": "late"}
    return None


@pytest.mark.parametrize("route", [by_version, f"{__name__}.by_version"])
def test_routes_that_read_kwargs_send_a_visit_to_one_queue_either_way(
    app: Celery, sqlite_url: str, route: Any
) -> None:
    # Given task_routes that route by the message's version (as a function, or by its name)
    app.conf.task_routes = (route,)
    durable = Durable(app, database_url=sqlite_url, inline_nodes=0)
    durable.migrate()
    chain(durable)
    dispatcher = durable.runtime.dispatcher
    sent: dict[str, str] = {}

    def record(sender: Any = None, headers: Any = None, routing_key: str = "", **_: Any) -> None:
        sent[headers["id"]] = routing_key

    # When each version's visit goes by the held producer and by send_task (a countdown)
    before_task_publish.connect(record, weak=False)
    try:
        for version in (2, 3):
            base = Base(version, {"trail": []}, Cursor(), Status.RUNNING)
            dispatcher.prepare("chain", "b", version, "lean", base).send()
            held = dispatcher.producer.connection
            dispatcher.dispatch("chain", "b", version, "delayed", base, countdown=1.0)
            assert held is not None and dispatcher.producer.connection is held  # lean, no fallback
    finally:
        before_task_publish.disconnect(record)
    # Then the router saw the same kwargs both ways: version 3 goes to "late" on both paths
    default = app.conf.task_default_queue
    assert sent == {
        "lean.b.2.1": default,
        "delayed.b.2.1": default,
        "lean.b.3.1": "late",
        "delayed.b.3.1": "late",
    }
    with app.connection_for_write() as connection:  # the in-memory broker outlives the app
        connection.default_channel.queue_purge("late")
    durable.db.dispose()


def test_routes_that_read_the_message_stop_inlining(app: Celery, sqlite_url: str) -> None:
    """Where the next node's message goes is known only once it is built: a route function
    could send it to another queue than the one this task came from."""
    app.conf.task_routes = (by_version,)
    durable = Durable(app, database_url=sqlite_url)
    durable.migrate()
    g = chain(durable)
    queues = [app.conf.task_default_queue, "late"]
    with messages(app) as seen, in_process_worker(durable, queues=queues):
        assert g.delay().wait(timeout=10).trail == list(NODES)
    assert seen == list(NODES)
    durable.db.dispose()
