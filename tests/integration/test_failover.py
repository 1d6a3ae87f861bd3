"""PostgreSQL fails over mid-load: the primary is killed, its synchronous standby promoted.

The URL names both servers and asks libpq for the one accepting writes, so nothing is
reconfigured: the workers (their pools, and the connection each thread holds for node
commits), the client that starts runs and waits for them, and the thread that LISTENs for
finished runs all have to find the new primary on their own. Every run must still finish,
every node visit committed exactly once.

The recovery sweep is kept out of it (runs go stale only after the test is over): a run that
finishes was carried through the failover by its own messages, not healed afterwards. The
workers' main processes beat every second, so their heartbeat rows say whether they too
write to the new primary.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from celery_durable import Durable, Execution, Status
from tests.integration import postgres_clusters
from tests.integration.app import CHAIN_NODES, DurableApp
from tests.integration.harness import Workers, assert_one_checkpoint_per_visit, ledger_lines
from tests.integration.postgres_clusters import Cluster, Pair
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RUNS = 60  # half started before the primary dies, half after
RUN_TIMEOUT = 30.0  # for all of them, from the promotion
# n3 sleeps, so that visits are running, and their commits in flight, when the primary dies;
# with 8 pool processes the first half takes about two seconds.
SLOW = {"sleep_at": "n3", "sleep": 0.5}
OUTAGE = 1.0  # seconds without a primary, between the kill and the promotion
# The listener's last statements before it waits (nobody streams here): its LISTENs.
LISTENING = "LISTEN durable_%"
WHOLE_TEST = 60.0


@pytest.fixture
def clusters() -> Iterator[Pair]:
    bindir = postgres_clusters.server_binaries()
    if bindir is None:
        pytest.skip(
            "PostgreSQL's server binaries (initdb, pg_basebackup, postgres) are not installed: "
            "neither pg_config --bindir nor /usr/lib/postgresql/*/bin has them"
        )
    with postgres_clusters.primary_and_standby(bindir) as pair:
        yield pair


@pytest.fixture
def pg_url(clusters: Pair) -> str:
    """Both servers in one URL: conftest's ``env`` hands it to the workers and the client."""
    return clusters.url()


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    """conftest's, with the recovery sweep out of reach of the test and a quick heartbeat."""
    return {**env, "CELERY_DURABLE_STALE_AFTER": "600", "CELERY_DURABLE_HEARTBEAT": "1"}


class Waiting(threading.Thread):
    """A client blocked in ``wait()`` on one run across the failover; keeps what the call
    returned or raised."""

    def __init__(self, execution: Execution, timeout: float) -> None:
        super().__init__(name="failover-waiter", daemon=True)
        self.execution = execution
        self.timeout = timeout
        self.state: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.state = self.execution.wait(timeout=self.timeout)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc


def started(ledger: Path, node: str) -> int:
    """How many visits of ``node`` have started, in all runs."""
    return sum(1 for line in ledger_lines(ledger) if line[1] == node and line[3] == "start")


def listening(server: Cluster, dbname: str) -> int:
    """Sessions on ``server`` whose last statement was the listener's LISTEN."""
    rows = server.execute(
        f"SELECT count(*) FROM pg_stat_activity WHERE query LIKE '{LISTENING}'", dbname
    )
    return int(rows[0][0])


def beating(d: Durable, since: datetime) -> set[str]:
    """The workers (names before the ``@``) whose heartbeat rows were written since ``since``."""
    return {row.worker.partition("@")[0] for row in d.runtime.fleet.rows.live(since)}


def test_primary_killed_mid_load_everything_follows_the_promoted_standby(
    clusters: Pair, durable: DurableApp, workers: Workers, ledger_path: Path
) -> None:
    began = time.monotonic()
    d = durable.durable
    # Given: two workers on the two-server URL, half the runs under way, a client waiting
    pool = [workers.start(concurrency=4) for _ in range(2)]
    runs = [d.start(durable.chain, SLOW) for _ in range(RUNS // 2)]
    waiter = Waiting(runs[-1], timeout=RUN_TIMEOUT + OUTAGE + 10)
    waiter.start()
    wait_for(lambda: listening(clusters.primary, clusters.dbname), 10, what="the LISTEN")
    wait_for(lambda: started(ledger_path, "n3") >= 8, 30, what="n3 visits running")

    # When: the primary dies mid-load (n3 visits running, entry messages queued), and its
    # standby is promoted a moment later
    clusters.primary.crash()
    time.sleep(OUTAGE)
    clusters.promote()
    promoted, promoted_at = time.monotonic(), datetime.now(UTC)

    # Then: the client starts the other half on the new primary, each at the first try
    runs += [d.start(durable.chain, SLOW) for _ in range(RUNS - RUNS // 2)]
    # ... every run finishes, on its own messages (the sweep is out of reach)
    for execution in runs:
        left = max(0.1, promoted + RUN_TIMEOUT - time.monotonic())
        state: Any = execution.wait(timeout=left)
        assert state.trail == list(CHAIN_NODES)
        assert state.count == len(CHAIN_NODES)
    # ... every visit committed once
    for execution in runs:
        assert execution.status == Status.SUCCEEDED
        history = execution.history()
        assert_one_checkpoint_per_visit(history)
        assert [(cp.kind, cp.node, cp.visit) for cp in history] == [
            ("start", "", 0),
            *[("node", name, 1) for name in CHAIN_NODES],
        ]
    # ... the client that waited through the failover got its answer
    waiter.join(timeout=10)
    assert waiter.error is None, f"wait() across the failover raised {waiter.error!r}"
    assert waiter.state is not None
    assert waiter.state.trail == list(CHAIN_NODES)
    # ... this process LISTENs on the new primary
    assert listening(clusters.standby, clusters.dbname) >= 1
    # ... and both workers' main processes beat there
    wait_for(
        lambda: beating(d, promoted_at) >= {w.name for w in pool}, 10, what="worker heartbeats"
    )
    took = time.monotonic() - began
    assert took < WHOLE_TEST, f"the failover test took {took:.0f}s"
