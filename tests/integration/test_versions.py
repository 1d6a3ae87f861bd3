"""Deploys on real RabbitMQ + PostgreSQL + worker subprocesses: every run keeps its version.

The workers run tests/integration/versions_app.py, whose graphs exist in version "1"
(a → b → c) and version "2" (a → x → c); ``DEPLOYED_VERSIONS`` says which versions a worker's
code defines. The scenarios are a deploy's: runs parked on the old version resume on a worker
that keeps it; with the old version gone they stop for an operator, who moves them on; old
and new workers share one queue through a rolling deploy, with and without a worker killed.
Heartbeats are a second or two here, so a worker's liveness is seconds, not half a minute.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from celery_durable import Execution, NeedsIntervention, Status
from celery_durable.model.records import Kind
from celery_durable.tasks.forwarding import version_queue
from tests.integration import versions_app
from tests.integration.harness import (
    BROKER_URL,
    HAND_ON,
    Worker,
    Workers,
    assert_one_checkpoint_per_visit,
    ledger_lines,
    settle,
)
from tests.integration.versions_app import APPROVED, PATHS, STRAIGHT, VERSIONS_ENV, VersionsApp
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

RUN_TIMEOUT = 60.0
ROLLING_RUNS = 50  # of each version
OLD, NEW, BOTH = ({VERSIONS_ENV: v} for v in ("1", "2", "1,2"))
FORWARDED = "is not defined here; sent on to the workers that serve it"
FORWARDED_TASK = re.compile(rf"\] (\S+): version \S+ of \S+ {FORWARDED}")
UNREGISTERED = "Received unregistered task"


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    """The integration environment with a one-second heartbeat, for workers and this process."""
    return {**env, "CELERY_DURABLE_HEARTBEAT": "1"}


@contextlib.contextmanager
def client(versions: Sequence[str] | None = None) -> Iterator[VersionsApp]:
    """This process as code defining ``versions`` (default: all) would be."""
    built = versions_app.build(versions)
    try:
        yield built
    finally:
        built.app.close()
        built.durable.db.dispose()


@pytest.fixture
def deploy(client_env: dict[str, str]) -> Iterator[VersionsApp]:
    """The newest code, defining both versions; schema migrated."""
    with client() as built:
        built.durable.migrate()
        yield built


@pytest.fixture
def workers(env: dict[str, str], queue: str, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(env, queue, tmp_path, app="tests.integration.versions_app")
    try:
        yield pool
    finally:
        pool.cleanup()
        delete_version_queues(queue)


def delete_version_queues(queue: str) -> None:
    with contextlib.suppress(Exception), Connection(BROKER_URL, connect_timeout=5) as conn:
        channel = conn.default_channel
        for graph in (APPROVED, STRAIGHT):
            for version in PATHS:
                name = version_queue(queue, graph, version).name
                with contextlib.suppress(Exception):
                    channel.queue_delete(name)
                with contextlib.suppress(Exception):
                    channel.exchange_delete(name)


def node_runs(ledger: Path, execution_id: str) -> list[tuple[str, str]]:
    """(node, version whose code ran it) for every node run of one execution, in order."""
    return [(line[1], line[3]) for line in ledger_lines(ledger) if line[0] == execution_id]


def signals(ledger: Path) -> Counter[str]:
    """How many intervention signals each execution's workers received."""
    return Counter(line[1] for line in ledger_lines(ledger) if line[0] == "signal")


def finish(runs: Sequence[Execution], pool: Workers) -> None:
    """Wait for every run to end; on a timeout say where each run is and what the logs say."""
    deadline = time.monotonic() + RUN_TIMEOUT
    for run in runs:
        try:
            run.wait(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:
            break
    statuses = Counter(str(run.status) for run in runs)
    if set(statuses) != {str(Status.SUCCEEDED)}:
        pytest.fail(f"not every run succeeded: {dict(statuses)}\n{log_summary(pool.started)}")


def log_summary(started: Sequence[Worker]) -> str:
    parts = []
    for worker in started:
        text = worker.output()
        unregistered = re.findall(rf"{UNREGISTERED} '([^']+)'", text)
        parts.append(
            f"--- {worker.name}: {text.count(FORWARDED)} forwarded, "
            f"{len(unregistered)} unregistered ({dict(Counter(unregistered))}); "
            f"{worker.log}\n{text[-2000:]}"
        )
    return "\n".join(parts)


def check_own_path(run: Execution, ledger: Path, *, reruns: bool = False) -> None:
    """Succeeded on its own version's path, each visit committed once, each node run by its
    version's code (once, unless ``reruns``: a killed attempt's node runs again)."""
    version = run.version
    assert version in PATHS, run.id
    path = list(PATHS[version])
    assert run.status == Status.SUCCEEDED, (run.id, run.status, run.error)
    assert run.state.path == path, (run.id, version)  # type: ignore[attr-defined]
    history = run.history()
    assert_one_checkpoint_per_visit(history)
    assert [(cp.kind, cp.node, cp.visit) for cp in history if cp.kind == Kind.NODE] == [
        (Kind.NODE, node, 1) for node in path
    ]
    ran = node_runs(ledger, run.id)
    assert {v for _, v in ran} == {version}, f"{run.id} ran on another version's code: {ran}"
    counts = Counter(node for node, _ in ran)
    assert set(counts) == set(path), (run.id, ran)
    if not reruns:
        assert all(n == 1 for n in counts.values()), (run.id, ran)


def live_versions(deploy: VersionsApp, graph: str) -> set[str]:
    return {d.served.version for d in deploy.durable.deployments() if d.served.graph == graph}


def test_parked_runs_keep_their_version_after_a_deploy(
    deploy: VersionsApp, workers: Workers, ledger_path: Path
) -> None:
    """Runs parked at an approval by the old code (v1) resume on a worker that defines v1 and
    v2 and finish on v1's path; runs started after the deploy take v2's."""
    with client(["1"]) as old:
        ids = [old.durable.start(APPROVED, {}).id for _ in range(4)]
    parked = [deploy.durable.get(execution_id) for execution_id in ids]
    for run in parked:
        assert run.version == "1"
        assert run.waiting_on == {"kind": "interrupt", "node": "a", "when": "before"}

    workers.start(extra_env=BOTH)
    assert live_versions(deploy, APPROVED) == {"1", "2"}
    started = [deploy.durable.start(APPROVED, {}) for _ in range(4)]
    assert [run.version for run in started] == ["2"] * 4

    for run in [*parked, *started]:
        run.resume(by="ops", reason="approved")
    finish([*parked, *started], workers)
    for run in parked:
        check_own_path(run, ledger_path)
        assert run.state.path == ["a", "b", "c"]  # type: ignore[attr-defined]
    for run in started:
        check_own_path(run, ledger_path)
        assert run.state.path == ["a", "x", "c"]  # type: ignore[attr-defined]
    counts = deploy.durable.runs_by_version()
    assert counts[(APPROVED, "1", Status.SUCCEEDED)] == 4
    assert counts[(APPROVED, "2", Status.SUCCEEDED)] == 4


def test_runs_of_a_retired_version_stop_and_an_upgrade_moves_them_on(
    deploy: VersionsApp, workers: Workers, ledger_path: Path
) -> None:
    """Only v2 deployed: resumed v1 runs stop as needs_intervention (GraphVersionMissing),
    nothing of them runs on v2's structure; upgrade() carries them on along v2's path."""
    old_worker = workers.start(extra_env=OLD)
    with client(["1"]) as old:
        ids = [old.durable.start(APPROVED, {}).id for _ in range(3)]
    parked = [deploy.durable.get(execution_id) for execution_id in ids]
    assert [run.version for run in parked] == ["1"] * 3

    # The deploy: the old worker shuts down (and leaves the fleet), the new one starts.
    old_worker.stop()
    new_worker = workers.start(extra_env=NEW)
    assert live_versions(deploy, APPROVED) == {"2"}

    for run in parked:
        run.resume(by="ops", reason="approved")
    for run in parked:
        with pytest.raises(NeedsIntervention):
            run.wait(timeout=RUN_TIMEOUT)
        error = run.error
        assert error is not None and error["type"] == "GraphVersionMissing", error
        message = error["message"]
        assert "version '1'" in message and "(deployed: 2)" in message, message
        assert f"durable upgrade {run.id}" in message, message
        assert run.version == "1"
        last = run.history()[-1]
        assert (last.kind, last.node) == (Kind.INTERVENTION, "a")
    settle(ledger_path)
    assert signals(ledger_path) == {run.id: 1 for run in parked}
    for run in parked:
        assert node_runs(ledger_path, run.id) == [], "nothing ran on another version's code"
    assert deploy.durable.runs_by_version()[(APPROVED, "1", Status.NEEDS_INTERVENTION)] == 3
    # Each resumed visit was looked at once: not forwarded, not redelivered in a loop.
    assert new_worker.output().count("'version missing'") == 3, log_summary(workers.started)
    assert FORWARDED not in new_worker.output()

    for run in parked:
        assert run.upgrade(version="2", by="ops", reason="v1 is retired") == "2"
    finish(parked, workers)
    for run in parked:
        check_own_path(run, ledger_path)
        assert run.state.path == ["a", "x", "c"]  # type: ignore[attr-defined]
        (moved,) = [cp for cp in run.history() if (cp.meta or {}).get("op") == "upgrade"]
        assert moved.meta is not None
        assert (moved.meta["from_version"], moved.meta["to_version"]) == ("1", "2")
        assert moved.meta["by"] == "ops"
    counts = deploy.durable.runs_by_version()
    assert counts[(APPROVED, "2", Status.SUCCEEDED)] == 3
    assert (APPROVED, "1", Status.NEEDS_INTERVENTION) not in counts


def start_rolling(deploy: VersionsApp, **input: Any) -> list[Execution]:
    """ROLLING_RUNS runs pinned to each version, interleaved, from code that defines both."""
    v1, v2 = deploy.rollout["1"], deploy.rollout["2"]
    runs = []
    for _ in range(ROLLING_RUNS):
        runs += [v1.apply_async(input), v2.apply_async(input)]
    assert Counter(run.version for run in runs) == {"1": ROLLING_RUNS, "2": ROLLING_RUNS}
    return runs


def old_and_new(workers: Workers, extra_env: dict[str, str]) -> tuple[Worker, Worker]:
    """A v1-only and a v2-only worker consuming the one queue."""
    old = workers.start(extra_env={**OLD, **extra_env}, wait=False)
    new = workers.start(extra_env={**NEW, **extra_env}, wait=False)
    old.wait_ready()
    new.wait_ready()
    return old, new


def check_rolling(runs: Sequence[Execution], workers: Workers, ledger: Path, reruns: bool) -> None:
    """Every run on its own path, none stopped for an operator, no visit dropped as an unknown
    task, none sent on twice (no loop between workers)."""
    finish(runs, workers)
    settle(ledger)
    for run in runs:
        check_own_path(run, ledger, reruns=reruns)
    assert not signals(ledger), "no run needed intervention"
    logs = [worker.output() for worker in workers.started]
    assert not any(UNREGISTERED in log for log in logs), log_summary(workers.started)
    forwarded = Counter(task for log in logs for task in FORWARDED_TASK.findall(log))
    # After a kill, a run whose message waits in its version's queue for the replacement to
    # boot may be found stale by the sweep and sent once more: twice, never a loop.
    most = 2 if reruns else 1
    assert all(n <= most for n in forwarded.values()), forwarded.most_common(3)


def check_counts(deploy: VersionsApp, runs: Sequence[Execution]) -> None:
    """What ``durable versions`` counts: every run succeeded, on its own version."""
    counts = deploy.durable.runs_by_version()
    assert {k: n for k, n in counts.items() if k[0] == STRAIGHT} == Counter(
        (STRAIGHT, run.version, Status.SUCCEEDED) for run in runs
    )


def check_reruns(ledger: Path) -> None:
    """A node ran again only where its earlier attempt's process died, and never when that
    attempt had committed (its process went on to the run's next node, inline)."""
    by_run: dict[str, list[tuple[str, int]]] = {}
    for line in ledger_lines(ledger):
        by_run.setdefault(line[0], []).append((line[1], int(line[4])))
    for execution_id, ran in by_run.items():
        for i, (node, pid) in enumerate(ran):
            later = ran[i + 1 :]
            if all(n != node for n, _ in later):
                continue
            assert not alive(pid), f"{execution_id}: {node} ran again, its process {pid} lives"
            went_on = [n for n, p in later if p == pid]
            assert not went_on, (
                f"{execution_id}: {node} ran again though it had committed (its process {pid} "
                f"went on to {went_on}): {ran}"
            )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("hand_on", sorted(HAND_ON))
def test_rolling_deploy_runs_each_version_on_its_own_workers(
    deploy: VersionsApp, workers: Workers, ledger_path: Path, hand_on: str
) -> None:
    """A v1-only and a v2-only worker on one queue, 50 runs of each version: every run on its
    own version's path, its nodes run by its version's code, each visit committed once."""
    old, new = old_and_new(workers, HAND_ON[hand_on])
    runs = start_rolling(deploy)
    check_rolling(runs, workers, ledger_path, reruns=False)
    check_counts(deploy, runs)
    # Both workers met visits of the version they lack, and sent them on.
    assert FORWARDED in old.output() and FORWARDED in new.output(), log_summary(workers.started)


def test_worker_killed_during_a_rolling_deploy_loses_nothing(
    deploy: VersionsApp, workers: Workers, ledger_path: Path, tmp_path: Path
) -> None:
    """SIGKILL of the v1-only worker mid-way, restarted with the same code: every run still
    finishes on its own path, each visit committed once, and no committed visit runs again,
    even when the killed worker's message comes back through the v2 worker."""
    # A worker silent for three heartbeats is gone, and the v1 runs whose visits reach the
    # v2 worker then stop for an operator: two-second heartbeats give the replacement (about
    # a second to boot) room, as the default ten seconds gives a real restart.
    slower = {"CELERY_DURABLE_HEARTBEAT": "2"}
    old = workers.start(extra_env={**OLD, **slower})
    # One v1 run is held in b, after a committed and inline in a's message, when the worker
    # dies. The old worker is alone on the queue when it starts, so it took a's message.
    gate = tmp_path / "hold-b"
    gate.touch()
    held = deploy.rollout["1"].apply_async({"hold": {"b": str(gate)}})
    wait_for(lambda: len(node_runs(ledger_path, held.id)) == 2, 30, what="the held run's b")
    new = workers.start(extra_env={**NEW, **slower})
    runs = start_rolling(deploy, sleep=0.05)
    total = sum(len(PATHS[run.version or ""]) for run in runs)
    wait_for(lambda: len(ledger_lines(ledger_path)) >= total // 3, 30, what="a third of the nodes")
    assert [cp.node for cp in held.history() if cp.kind == Kind.NODE] == ["a"]

    old.kill()
    gate.unlink()
    # Redelivered, a's message reaches the v2 worker (the only one left on the queue), which
    # sends it on to v1's queue; the replacement takes it from there.
    wait_for(
        lambda: any(t.startswith(f"{held.id}.a.") for t in FORWARDED_TASK.findall(new.output())),
        10,
        what="the v2 worker to send the held run's message on",
    )
    workers.start(extra_env={**OLD, **slower})
    check_rolling([*runs, held], workers, ledger_path, reruns=True)
    check_counts(deploy, [*runs, held])
    assert [node for node, _ in node_runs(ledger_path, held.id)] == ["a", "b", "b", "c"], (
        "a had committed; only b, killed mid-run, runs again"
    )
    check_reruns(ledger_path)
