"""The example shop: an order-fulfilment graph and an order saga.

Run a worker against RabbitMQ and PostgreSQL (configured by CELERY_BROKER_URL and
CELERY_DURABLE_DATABASE_URL)::

    celery -A examples.order_app worker -P prefork -c 2 -l INFO -E
    python -m examples.order_app 5          # submit five orders and wait for them

or run the whole thing in one process with no server: ``celery-durable demo``.

The shop shows each piece of celery-durable once:

- ``fulfilment`` graph: validate, then fraud check and stock check in parallel (fan-out),
  joined by ``price``; a branch picks express or standard shipping; the carrier API times
  out on the first attempt and the node is retried.
- ``order`` saga: reserve stock, charge the card, ship (the carrier times out once). A card
  over its limit is declined, not retried, and the saga releases the stock it reserved. A
  customer who cancels a shipped order gets ``compensate()``: refund, then release, newest
  first.
"""

from __future__ import annotations

import operator
import os
import sys
import time
from typing import Annotated

from celery import Celery
from pydantic import BaseModel, Field

from celery_durable import (
    Context,
    Durable,
    EventTimeout,
    Graph,
    NonRetryable,
    Reduce,
    RetryPolicy,
    Saga,
)
from celery_durable.metrics import instrument

CARD_LIMIT = 1_000
EXPRESS_FROM = 200
# Seconds each node "works", so that progress is visible in the demo.
WORK = float(os.environ.get("SHOP_WORK_SECONDS", "0"))


class Order(BaseModel):
    order_id: str
    amount: int = Field(gt=0)
    checks: Annotated[list[str], Reduce(operator.add)] = []
    price: int = 0
    shipping: str = ""
    tracking: str = ""
    reserved: bool = False
    charged: bool = False


class CardDeclined(NonRetryable):
    """The card issuer said no: retrying will not change its mind."""


class Return(BaseModel):
    order_id: str
    amount: int = Field(gt=0)
    received: bool = False
    inspected: bool = False
    approved: bool = False
    refunded: int = 0


class Payments:
    """Stands in for a payment provider: like a real one, it charges once per idempotency
    key, however often it is asked (``requests`` keeps every ask, ``charges`` the charges)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.charges: list[str] = []
        self.refunded: list[str] = []

    def charge(self, key: str, amount: int) -> None:
        self.requests.append(key)
        if key not in self.charges:
            self.charges.append(key)

    def refund(self, key: str) -> None:
        self.refunded.append(key)


payments = Payments()


# How long the returned parcel takes to inspect: a durable sleep, no worker held meanwhile.
INSPECTION_SECONDS = float(os.environ.get("SHOP_INSPECTION_SECONDS", "2"))
CARRIER = RetryPolicy(max_attempts=4, initial_delay=0.2, backoff=2, max_delay=2)


def define(durable: Durable) -> tuple[Graph, Saga]:
    """Both workflows of the shop, bound to ``durable``."""
    return define_fulfilment(durable), define_orders(durable)


def define_fulfilment(durable: Durable) -> Graph:
    fulfilment = durable.graph("fulfilment", state=Order)

    @fulfilment.node
    def validate(order: Order) -> dict[str, object]:
        time.sleep(WORK)
        return {"checks": ["validated"]}

    @fulfilment.node
    def fraud_check(order: Order) -> dict[str, object]:
        time.sleep(WORK)
        return {"checks": ["fraud-ok"]}

    @fulfilment.node
    def stock_check(order: Order) -> dict[str, object]:
        time.sleep(WORK)
        return {"checks": ["in-stock"]}

    @fulfilment.node
    def price(order: Order) -> dict[str, object]:
        time.sleep(WORK)
        return {"price": order.amount + (15 if order.amount >= EXPRESS_FROM else 5)}

    @fulfilment.node(retry=CARRIER)
    def express(order: Order, ctx: Context) -> dict[str, object]:
        time.sleep(WORK)
        if ctx.attempt == 1:
            raise TimeoutError("carrier API timed out")
        return {"shipping": "express", "tracking": f"EX-{order.order_id}"}

    @fulfilment.node(retry=CARRIER)
    def standard(order: Order, ctx: Context) -> dict[str, object]:
        time.sleep(WORK)
        if ctx.attempt == 1:
            raise TimeoutError("carrier API timed out")
        return {"shipping": "standard", "tracking": f"ST-{order.order_id}"}

    fulfilment.entry(validate)
    fulfilment.edge(validate, [fraud_check, stock_check])
    fulfilment.edge([fraud_check, stock_check], price)
    fulfilment.branch(
        price,
        lambda order: "express" if order.amount >= EXPRESS_FROM else "standard",
        paths=[express, standard],
    )
    return fulfilment


def define_returns(durable: Durable, inspection: float = INSPECTION_SECONDS) -> Graph:
    """A return: the parcel comes back (the event ``parcel``, or after a day the return
    expires), it is inspected (a durable sleep of ``inspection`` seconds), then someone
    approves the refund (the run waits before ``refund`` until ``resume(update=...)``)."""
    returns = durable.graph("returns", state=Return)

    @returns.node
    def inspect(ret: Return, ctx: Context) -> dict[str, object]:
        try:
            ctx.wait_for_event("parcel", timeout=86400)
        except EventTimeout:
            return {"received": False}
        ctx.sleep(inspection)
        return {"received": True, "inspected": True}

    @returns.node(interrupt_before=True)
    def refund(ret: Return) -> dict[str, object]:
        return {"refunded": ret.amount if ret.approved else 0}

    returns.entry(inspect)
    returns.branch(inspect, lambda ret: "refund" if ret.received else None, paths=[refund])
    return returns


def define_orders(durable: Durable) -> Saga:
    orders = durable.saga("order", state=Order)

    @orders.step
    def reserve(order: Order) -> dict[str, object]:
        time.sleep(WORK)
        return {"reserved": True}

    @reserve.compensation
    def release(order: Order) -> None:
        time.sleep(WORK)

    @orders.step(retry=RetryPolicy(max_attempts=3, initial_delay=0.2))
    def charge(order: Order, ctx: Context) -> dict[str, object]:
        time.sleep(WORK)
        if order.amount > CARD_LIMIT:
            raise CardDeclined(f"card declined: {order.amount} is over the limit")
        # ctx.idempotency_key is what a payment API takes to never charge twice.
        payments.charge(ctx.idempotency_key, order.amount)
        return {"charged": True}

    @charge.compensation
    def refund(order: Order, ctx: Context) -> None:
        time.sleep(WORK)
        payments.refund(ctx.idempotency_key)

    @orders.step(retry=CARRIER)
    def ship(order: Order, ctx: Context) -> dict[str, object]:
        time.sleep(WORK)
        if ctx.attempt == 1:
            raise TimeoutError("carrier API timed out")
        return {"shipping": "standard", "tracking": f"ST-{order.order_id}"}

    return orders


app = Celery(
    "shop", broker=os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@localhost:5672//")
)
app.conf.worker_prefetch_multiplier = 1
# One queue per deployment (or per test run): SHOP_QUEUE, default Celery's own.
app.conf.task_default_queue = os.environ.get("SHOP_QUEUE", "celery")
durable = Durable(app)
instrument(durable)
fulfilment, orders = define(durable)
returns = define_returns(durable)


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    durable.migrate()
    runs = [orders.delay(order_id=f"o-{i}", amount=100 * (i + 1)) for i in range(count)]
    for run in runs:
        try:
            print(run.id, run.wait(timeout=120))
        except Exception as exc:
            print(run.id, type(exc).__name__, exc)
