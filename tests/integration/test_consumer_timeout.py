"""A node that runs longer than RabbitMQ's consumer_timeout finishes, once.

RabbitMQ closes a consumer's channel with PRECONDITION_FAILED when a delivery stays unacked
longer than ``consumer_timeout`` (checked on the channel's tick, ``channel_tick_interval``,
60 s by default), and requeues the delivery. A node task is acks_late, so a node (or the nodes
a message runs inline) running past the timeout meets this. The worker must reconnect rather
than shut down (Celery's ``broker_channel_error_retry``), must not kill the running node at the
reconnect (``worker_cancel_long_running_tasks_on_connection_loss``), and the requeued copy
must step aside for the live attempt (its lease), so that the node's side effect happens once.

The test lowers both settings on the real RabbitMQ node with ``rabbitmqctl eval`` and puts
them back afterwards. A channel reads ``consumer_timeout`` when it opens, so the low timeout
is only in force while the workers start (their consumer channel gets it) and is restored at
once: channels other tests open meanwhile get a 3 s timeout only inside that window. The tick
stays short until the end (it only makes RabbitMQ check more often). Do not run this test in
parallel with other tests against the same broker.

``DURABLE_TEST_RABBITMQCTL`` overrides the command (e.g. ``rabbitmqctl -n ct@localhost``).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_durable import Status
from tests.integration.app import CHAIN_NODES, DurableApp
from tests.integration.harness import (
    HAND_ON,
    Workers,
    assert_one_checkpoint_per_visit,
    chain_events,
    settle,
)

pytestmark = pytest.mark.integration

RABBITMQCTL = shlex.split(os.environ.get("DURABLE_TEST_RABBITMQCTL", "rabbitmqctl"))
CONSUMER_TIMEOUT_MS = 3000
TICK_MS = 1000
NODE_SLEEP = 7.0  # two consumer timeouts and their ticks
RUN_TIMEOUT = 90.0
TIMED_OUT = "delivery acknowledgement on channel"  # RabbitMQ's PRECONDITION_FAILED text


def rabbit_eval(expression: str) -> str:
    done = subprocess.run(
        [*RABBITMQCTL, "eval", expression], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl eval {expression!r}: {done.stderr or done.stdout}")
    return done.stdout.strip()


def get_env(key: str) -> str:
    """``{ok,Value}`` or ``undefined``, as Erlang prints them."""
    return rabbit_eval(f"application:get_env(rabbit, {key}).")


def set_env(key: str, value: int) -> None:
    rabbit_eval(f"application:set_env(rabbit, {key}, {value}).")
    assert get_env(key) == f"{{ok,{value}}}", f"RabbitMQ did not take {key}={value}"


def restore_env(key: str, saved: str) -> None:
    match = re.fullmatch(r"\{ok,(.+)\}", saved)
    if match:
        rabbit_eval(f"application:set_env(rabbit, {key}, {match.group(1)}).")
    else:
        rabbit_eval(f"application:unset_env(rabbit, {key}).")


@pytest.fixture
def rabbit_settings() -> Iterator[dict[str, str]]:
    """The node's consumer_timeout and channel_tick_interval as found; restored afterwards."""
    try:
        saved = {key: get_env(key) for key in ("consumer_timeout", "channel_tick_interval")}
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot reach RabbitMQ with {shlex.join(RABBITMQCTL)}: {exc}")
    try:
        yield saved
    finally:
        for key, value in saved.items():
            restore_env(key, value)


@pytest.mark.parametrize("hand_on", sorted(HAND_ON))
def test_node_longer_than_consumer_timeout_finishes_once(
    durable: DurableApp,
    workers: Workers,
    ledger_path: Path,
    rabbit_settings: dict[str, str],
    hand_on: str,
) -> None:
    set_env("channel_tick_interval", TICK_MS)
    set_env("consumer_timeout", CONSUMER_TIMEOUT_MS)
    try:
        # The lease must exist before the broker redelivers, so that the copy steps aside:
        # lease_after below the consumer timeout (by default 5 s against 30 min).
        worker = workers.start(
            concurrency=2, extra_env={**HAND_ON[hand_on], "CELERY_DURABLE_LEASE_AFTER": "1"}
        )
    finally:
        restore_env("consumer_timeout", rabbit_settings["consumer_timeout"])

    ex = durable.durable.start(durable.chain, {"sleep_at": "n3", "sleep": NODE_SLEEP})
    state: Any = ex.wait(timeout=RUN_TIMEOUT)

    assert ex.status == Status.SUCCEEDED
    assert state.count == 5
    assert state.trail == list(CHAIN_NODES)
    output = worker.output()
    assert TIMED_OUT in output, "RabbitMQ never timed the delivery out: the test proved nothing"
    assert "Unrecoverable error" not in output
    assert worker.alive(), "the worker shut down after the channel error"

    settle(ledger_path)
    for node in CHAIN_NODES:
        assert len(chain_events(ledger_path, ex.id, node, "start")) == 1, (
            f"{node} ran more than once"
        )
        assert len(chain_events(ledger_path, ex.id, node, "done")) == 1
    history = ex.history()
    assert_one_checkpoint_per_visit(history)
    assert [(cp.kind, cp.node, cp.visit) for cp in history] == [
        ("start", "", 0),
        *[("node", name, 1) for name in CHAIN_NODES],
    ]
