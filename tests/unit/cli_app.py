"""A tiny app for CLI tests: `celery -A tests.unit.cli_app durable ...` in a subprocess.

The database comes from CELERY_DURABLE_DATABASE_URL; the broker is in memory, so commands
that dispatch publish into the void and tests check their effect in the database.
"""

from __future__ import annotations

from pydantic import BaseModel

from celery_durable import Context, Durable, Graph
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


app = embedded_app("cli")
durable = Durable(app)
tickets = define(durable)
approvals = define_approvals(durable)
durable.breaker("payments", failure_threshold=3, reset_after=60)
