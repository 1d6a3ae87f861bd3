"""A tiny app for CLI tests: `celery -A tests.unit.cli_app durable ...` in a subprocess.

The database comes from CELERY_DURABLE_DATABASE_URL; the broker is in memory, so commands
that dispatch publish into the void and tests check their effect in the database. With
CLI_APP_BROKER_URL the app uses that broker instead (one that is down, say).
"""

from __future__ import annotations

import os
from types import SimpleNamespace

from click.testing import CliRunner, Result
from pydantic import BaseModel

from celery_durable import Context, Durable, Graph, RetryPolicy
from celery_durable.cli import durable as durable_command
from celery_durable.testing import embedded_app


class Ticket(BaseModel):
    title: str
    done: bool = False


def define(durable: Durable) -> Graph:
    tickets = durable.graph("tickets", state=Ticket)

    @tickets.node
    def triage(ticket: Ticket) -> dict[str, object]:
        return {}

    @tickets.node
    def close(ticket: Ticket) -> dict[str, object]:
        return {"done": True}

    tickets.entry(triage)
    tickets.edge(triage, close)
    return tickets


class Approval(BaseModel):
    title: str
    approved: bool = False
    note: str = ""


def define_approvals(durable: Durable) -> Graph:
    approvals = durable.graph("approvals", state=Approval)

    @approvals.node(interrupt_before=True)
    def review(approval: Approval) -> dict[str, object]:
        return {}

    @approvals.node
    def annotate(approval: Approval, ctx: Context) -> dict[str, object]:
        return {"note": ctx.wait_for_event("note")}

    approvals.entry(review)
    approvals.edge(review, annotate)
    return approvals


class Call(BaseModel):
    fail: bool = True


def define_flaky(durable: Durable) -> Graph:
    """One node that fails at once while its input says so: failed runs to operate on."""
    flaky = durable.graph("flaky", state=Call)

    @flaky.node(retry=RetryPolicy.never())
    def call(state: Call) -> dict[str, object]:
        if state.fail:
            raise ConnectionError("payments API refused the connection")
        return {}

    flaky.entry(call)
    return flaky


def invoke(durable: Durable, *args: str) -> Result:
    """``celery -A <durable's app> durable ARGS``, in this process: the commands' own code on
    this test's Durable, without a subprocess's start-up."""
    return CliRunner().invoke(durable_command, list(args), obj=SimpleNamespace(app=durable.app))


app = embedded_app("cli")
if os.environ.get("CLI_APP_BROKER_URL"):
    app.conf.broker_url = os.environ["CLI_APP_BROKER_URL"]
durable = Durable(app)
tickets = define(durable)
approvals = define_approvals(durable)
flaky = define_flaky(durable)
durable.breaker("payments", failure_threshold=3, reset_after=60)
