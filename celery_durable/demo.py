"""``celery-durable demo``: the example shop on SQLite with an in-process broker and worker.

No server needed. It shows a fan-out and join, a branch, a node retried after a timeout, a
live progress bar, the final state and history; then an order saga whose card is declined,
undone newest first.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import click

from celery_durable import Compensated, Durable, Graph, render
from celery_durable.model.records import Kind
from celery_durable.testing import embedded_app, in_process_worker

WORK_SECONDS = "0.15"


def _shop() -> object:
    """The example lives in examples/: a checkout's, found from the working directory, else
    the copy the wheel installs as data (``share/celery-durable/examples``)."""
    shipped = Path(sysconfig.get_path("data")) / "share" / "celery-durable"
    sys.path[:0] = [os.getcwd(), str(shipped)]
    os.environ.setdefault("SHOP_WORK_SECONDS", WORK_SECONDS)
    try:
        return importlib.import_module("examples.order_app")
    except ImportError as exc:
        raise click.ClickException(
            f"cannot import examples.order_app ({exc}); reinstall celery-durable, or run the "
            "demo from a checkout of it (make demo)."
        ) from exc


def run(database_url: str | None = None) -> None:
    started = time.monotonic()
    shop = _shop()
    if database_url is None:
        database_url = (
            f"sqlite:///{Path(tempfile.mkdtemp(prefix='durable-demo-')) / 'demo.sqlite3'}"
        )
    durable = Durable(embedded_app("demo"), database_url=database_url)
    durable.migrate()
    fulfilment, orders = shop.define(durable)  # type: ignore[attr-defined]
    returns = shop.define_returns(durable)  # type: ignore[attr-defined]
    click.echo(f"celery-durable demo: SQLite at {database_url}, in-process broker and worker\n")
    with in_process_worker(durable, timers=True):
        _fulfil(durable, fulfilment)
        _orders(orders)
        _return(returns)
    click.echo(
        f"\ndemo finished in {time.monotonic() - started:.1f}s; "
        f"inspect it: celery-durable --database-url {database_url} ls"
    )


def _fulfil(durable: Durable, fulfilment: Graph) -> None:
    click.echo("1. Fulfilment graph: fan-out and join, a branch, a retried carrier call")
    run1 = fulfilment.delay(order_id="o-1001", amount=250)
    render.follow_progress(run1)
    final = run1.wait(timeout=60).model_dump()
    click.echo(f"   final state: {final}")
    checkpoints = run1.history()
    click.echo(render.graph(fulfilment, render.node_states(run1.refresh(), checkpoints)))
    click.echo(render.history(checkpoints))
    retried = durable.visits.get(run1.id, Kind.NODE, final["shipping"], 1)
    if retried is not None:
        click.echo(
            f"   {final['shipping']} failed {retried.attempts} time(s) "
            f"({retried.last_error['message'] if retried.last_error else ''}) and was retried"
        )


def _orders(orders: Graph) -> None:
    click.echo("\n2. Order saga: the card is declined, so the saga compensates")
    run2 = orders.delay(order_id="o-1002", amount=5_000)
    try:
        run2.wait(timeout=60)
    except Compensated as exc:
        click.echo(f"   {exc}")
    click.echo(render.history(run2.history()))

    click.echo("\n3. Order saga that succeeds (its ship step is retried once)")
    run3 = orders.delay(order_id="o-1003", amount=120)
    click.echo(f"   final state: {run3.wait(timeout=60).model_dump()}")

    click.echo("\n4. The customer cancels o-1003: compensate() undoes it, newest first")
    run3.compensate("customer cancelled", by="support@shop")
    with contextlib.suppress(Compensated):
        run3.wait(timeout=60)
    click.echo(render.history(run3.history()))


def _return(returns: Graph) -> None:
    click.echo("\n5. A return: the parcel arrives (an event), inspection is a durable sleep,")
    click.echo("   the refund waits for approval")
    run = returns.delay(order_id="o-1003", amount=120)
    run.send_event("parcel", {"tracking": "RT-1003"})
    for kind in ("sleep", "interrupt"):
        # One read per look: the sleep may end between two reads of the run.
        while (waiting := run.waiting_on) is None or waiting["kind"] != kind:
            time.sleep(0.05)
        click.echo(f"   {run.status}: {waiting} (no worker is held)")
    run.resume(update={"approved": True}, by="support@shop", reason="parcel intact")
    click.echo(f"   approved by support@shop; final state: {run.wait(timeout=60).model_dump()}")
    click.echo(render.history(run.history()))
