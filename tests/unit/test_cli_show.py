"""What `show`, `history`, `progress` and `ls` say is true: every failed attempt with its
error, what a run waits for, times as dates (ISO in JSON, never epoch floats), no ETA while
a run sleeps and no 100% for a saga that was undone."""

from __future__ import annotations

import io
import json
import re
import threading
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from celery_durable import Context, Durable, RetryPolicy, Status, render
from celery_durable.testing import in_process_worker
from tests.unit import cli_app
from tests.waiting import wait_for

DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


class Work(BaseModel):
    done: bool = False


def epoch_floats(data: Any) -> list[float]:
    """Numbers that look like epoch times (2001 onwards), anywhere in ``data``."""
    if isinstance(data, dict):
        return [n for value in data.values() for n in epoch_floats(value)]
    if isinstance(data, list):
        return [n for value in data for n in epoch_floats(value)]
    return [data] if isinstance(data, float) and data > 1e9 else []


def json_of(durable: Durable, *args: str) -> Any:
    result = cli_app.invoke(durable, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_history_and_show_say_each_failed_attempt_and_that_retry_exists(
    durable: Durable,
) -> None:
    g = durable.graph("shaky", state=Work)
    calls: list[int] = []

    @g.node(retry=RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=False))
    def call(state: Work) -> dict[str, bool]:
        calls.append(1)
        raise ConnectionError(f"refused {len(calls)}")

    g.entry(call)
    with in_process_worker(durable):
        run = g.apply_async(execution_id="s-1")
        wait_for(lambda: run.status == Status.FAILED, 10.0)

    history = cli_app.invoke(durable, "history", run.id).stdout
    cells = [re.split(r"\s{2,}", line.strip()) for line in history.splitlines()[2:]]
    assert [(c[3], c[4], c[-1]) for c in cells] == [
        ("start", "-", "-"),
        ("attempt", "call", "attempt 1 of 3 failed: ConnectionError: refused 1"),
        ("attempt", "call", "attempt 2 of 3 failed: ConnectionError: refused 2"),
        ("attempt", "call", "attempt 3 of 3 failed: ConnectionError: refused 3"),
        ("failure", "call", "-"),
    ], history
    assert all(DATE_TIME.fullmatch(c[1]) for c in cells), history  # a date with each time

    rows_json = json_of(durable, "history", run.id)
    assert [(r["kind"], r.get("attempt")) for r in rows_json] == [
        ("start", None),
        ("attempt", 1),
        ("attempt", 2),
        ("attempt", 3),
        ("failure", None),
    ]
    assert rows_json[1]["error"]["message"] == "refused 1" and rows_json[1]["max_attempts"] == 3

    shown = cli_app.invoke(durable, "show", run.id).stdout
    assert "last error: call: attempt 3 of 3 failed: ConnectionError: refused 3" in shown
    assert f"fix the cause, then durable retry {run.id} runs call again" in shown
    operations = "operations: cancel, retry, upgrade, delete, skip"
    assert f"{operations} (durable <operation> {run.id})" in shown
    data = json_of(durable, "show", run.id)
    assert [a["attempt"] for a in data["last_failures"]] == [3]
    assert "retry" in data["operations"]


def test_show_and_ls_say_what_a_run_waits_for_and_json_has_iso_times_only(
    durable: Durable,
) -> None:
    sleepy = durable.graph("sleepy", state=Work)

    @sleepy.node
    def prepare(state: Work) -> None:
        return None

    @sleepy.node
    def nap(state: Work, ctx: Context) -> None:
        ctx.sleep(3600)

    sleepy.entry(prepare)
    sleepy.edge(prepare, nap)
    paid = durable.graph("paid", state=Work)

    @paid.node
    def collect(state: Work, ctx: Context) -> None:
        ctx.wait_for_event("paid", timeout=7200)

    paid.entry(collect)
    kid = durable.graph("kid", state=Work)

    @kid.node
    def rest(state: Work, ctx: Context) -> None:
        ctx.sleep(3600)

    kid.entry(rest)
    parent = durable.graph("parent", state=Work)

    @parent.node
    def fan(state: Work, ctx: Context) -> None:
        ctx.map(kid, [{}, {}])

    parent.entry(fan)
    with in_process_worker(durable):
        runs = [g.apply_async(execution_id=g.name) for g in (sleepy, paid, parent)]
        wait_for(lambda: all(r.status == Status.WAITING for r in runs), 10.0)
    until = datetime.fromisoformat(runs[0].waiting_on["until"])

    shown = cli_app.invoke(durable, "show", "sleepy").stdout
    assert f"waiting: sleep until {until:%Y-%m-%d %H:%M:%S} UTC at nap" in shown, shown
    shown = cli_app.invoke(durable, "show", "paid").stdout
    assert "waiting: event paid (times out " in shown
    assert "(send it: durable send-event paid paid [--data JSON])" in shown
    shown = cli_app.invoke(durable, "show", "parent").stdout
    assert "waiting: 2 child runs parent.fan.1.m0.* at fan" in shown

    progress = cli_app.invoke(durable, "progress", "sleepy", "--no-follow").stdout
    assert f"1/2 nodes (50%) at nap, sleeping until {until:%H:%M:%S} UTC [waiting]" in progress
    assert "eta" not in progress

    history = cli_app.invoke(durable, "history", "sleepy").stdout
    assert " wait " in history and not re.search(r"\d{10}\.\d", history), history
    for command in (["show", "sleepy"], ["history", "sleepy"], ["ls"], ["progress", "sleepy"]):
        data = json_of(durable, *command)
        assert epoch_floats(data) == [], command
    show = json_of(durable, "show", "sleepy")
    assert show["waiting_on"] == [{"kind": "sleep", "node": "nap", "until": until.isoformat()}]
    (wait,) = show["cursor"]["waits"].values()
    assert datetime.fromisoformat(wait["until"]) == until
    assert json_of(durable, "progress", "sleepy")["eta"] is None


def test_a_compensated_saga_is_not_shown_as_done(durable: Durable) -> None:
    saga = durable.saga("order", state=Work)

    @saga.step(retry=RetryPolicy.never(), compensate=lambda state: None)
    def reserve(state: Work) -> dict[str, bool]:
        return {"done": True}

    @saga.step(retry=RetryPolicy.never())
    def charge(state: Work) -> None:
        raise ValueError("card declined")

    with in_process_worker(durable):
        run = saga.apply_async(execution_id="o-1")
        wait_for(lambda: run.status == Status.COMPENSATED, 10.0)

    bar = cli_app.invoke(durable, "progress", run.id, "--no-follow").stdout
    assert "1/2 nodes done, then 1 step undone [compensated]" in bar and "100%" not in bar
    assert bar.startswith("[------------------------------]")
    data = json_of(durable, "progress", run.id)
    assert (data["percent"], data["undone"]) == (0.0, 1)


def test_progress_follows_the_run_as_it_commits_and_stops_at_its_end(durable: Durable) -> None:
    g = durable.graph("followed", state=Work)
    gate = threading.Event()

    @g.node
    def first(state: Work, ctx: Context) -> dict[str, bool]:
        gate.wait(10)
        return {}

    @g.node
    def second(state: Work) -> dict[str, bool]:
        return {"done": True}

    g.entry(first)
    g.edge(first, second)
    out = io.StringIO()
    with in_process_worker(durable):
        run = g.delay()
        follower = threading.Thread(target=render.follow_progress, args=(run,), kwargs={"out": out})
        follower.start()
        wait_for(lambda: "0/2" in out.getvalue(), 10, what="the first bar")
        gate.set()
        follower.join(10)
    assert not follower.is_alive()
    lines = out.getvalue().splitlines()
    assert "0/2" in lines[0] and "2/2" in lines[-1] and len(lines) <= 4
