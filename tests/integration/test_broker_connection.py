"""Node messages go out on a connection each thread holds. When RabbitMQ closes it (here by
``rabbitmqctl close_connection``, as a broker restart or missed heartbeats would), the next
message notices before writing, goes by ``send_task``, and none is lost."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from kombu import Connection

from tests.integration.app import DurableApp
from tests.integration.harness import BROKER_URL, Workers

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl"),
]


def close_on_the_broker(local_port: int) -> None:
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "name"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    pids = [line.split("\t")[0] for line in listed if f":{local_port} ->" in line]
    assert len(pids) == 1, listed
    subprocess.run(
        ["rabbitmqctl", "-q", "close_connection", pids[0], "closed by the test"], check=True
    )


def ready(queue: str) -> int:
    with Connection(BROKER_URL, connect_timeout=5) as conn:
        return int(conn.default_channel.queue_declare(queue, passive=True).message_count)


def test_a_connection_closed_by_the_broker_loses_no_start(
    durable: DurableApp, workers: Workers
) -> None:
    first = durable.chain.delay()
    held = durable.durable.runtime.dispatcher.producer
    assert held.connection is not None
    close_on_the_broker(held.connection.connection.sock.getsockname()[1])
    later = [durable.chain.delay() for _ in range(3)]
    assert ready(durable.queue) == 4  # none went into the closed connection
    workers.start()
    for run in [first, *later]:
        assert run.wait(timeout=60).count == 5
