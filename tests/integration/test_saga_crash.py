"""Sagas on real RabbitMQ + PostgreSQL + prefork worker subprocesses.

The real-process versions of tests/unit/test_saga.py: compensations run newest first, once
per completed step, retried on the schedule their policy promises (gaps measured from the
ledger's time.time() stamps, attempts read from the database); a worker SIGKILLed in the
middle of a compensation does not undo anything twice; a compensation that fails for good
stops the run in needs_intervention, loudly, until an operator fixes the cause and retries;
compensate() undoes a finished saga, or a running one once its step in flight has committed.

The ``trip`` saga (tests/integration/app.py) is s1 → s2 → s3 → s4, each with an undo; its
state says which step fails, what is flaky, slow or blocked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

from celery_durable import Compensated, Execution, NeedsIntervention, RetryPolicy, Status
from tests.integration.app import (
    HOLD_RETRY,
    TRIP_COMPENSATION_RETRY,
    TRIP_RETRY,
    TRIP_STEPS,
    DurableApp,
)
from tests.integration.harness import (
    Workers,
    assert_one_checkpoint_per_visit,
    ledger_lines,
    settle,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

RUN_TIMEOUT = 60.0
# Observed gaps may exceed the policy's delay by dispatch and broker latency, never undercut
# it by more than clock granularity.
SLACK_ABOVE, SLACK_BELOW = 0.5, 0.05


@dataclass(frozen=True)
class Event:
    """A saga ledger line: ``<execution> <event> <step> <attempt> <time> <pid> <done>``."""

    event: str
    step: str
    attempt: int
    at: float
    pid: int
    done: str


def events(ledger: Path, execution_id: str, event: str, step: str | None = None) -> list[Event]:
    found = []
    for line in ledger_lines(ledger):
        if line[0] != execution_id or line[1] != event or (step and line[2] != step):
            continue
        found.append(Event(line[1], line[2], int(line[3]), float(line[4]), int(line[5]), line[6]))
    return found


def signals(ledger: Path, execution_id: str) -> list[list[str]]:
    """``signal <execution> <step> <pid>`` lines the intervention_required receiver wrote."""
    return [line for line in ledger_lines(ledger) if line[:2] == ["signal", execution_id]]


def steps_of(ledger: Path, execution_id: str, event: str) -> list[str]:
    return [e.step for e in events(ledger, execution_id, event)]


def check_gaps(starts: list[Event], policy: RetryPolicy) -> list[float]:
    """Each gap between attempt k's start and attempt k+1's lies in policy.bounds(k)."""
    assert [e.attempt for e in starts] == list(range(1, len(starts) + 1)), starts
    gaps = []
    for earlier, later in pairwise(starts):
        gap = later.at - earlier.at
        low, high = policy.bounds(earlier.attempt)
        assert low - SLACK_BELOW <= gap <= high + SLACK_ABOVE, (
            f"{earlier.step} attempt {earlier.attempt} -> {later.attempt}: gap {gap:.3f}s "
            f"outside [{low}, {high}] (slack -{SLACK_BELOW}/+{SLACK_ABOVE})"
        )
        gaps.append(gap)
    return gaps


def attempts_in_db(durable: DurableApp, ex: Execution, kind: str, step: str) -> int:
    visit = durable.durable.visits.get(ex.id, kind, step, 1)
    return visit.attempts if visit is not None else 0


def journal(ex: Execution) -> list[tuple[str, str]]:
    return [(cp.kind, cp.node) for cp in ex.history()]


def undone_in_db(ex: Execution) -> list[str]:
    return [cp.node for cp in ex.history() if cp.kind == "compensation"]


def test_compensates_newest_first_with_retries_on_schedule(
    durable: DurableApp, workers: Workers, ledger_path: Path
) -> None:
    """s2 and its undo each fail twice then succeed; s3 fails for good; s4 never runs."""
    workers.start()
    ex = durable.durable.start(
        durable.trip,
        {"flaky": {"s2": 2}, "fail_at": "s3", "compensation_flaky": {"s2": 2}},
    )
    with pytest.raises(Compensated) as compensated:
        ex.wait(timeout=RUN_TIMEOUT)
    settle(ledger_path)

    # Reverse order, each completed step once, the failed step and the unreached one never.
    assert compensated.value.node == "s3"
    assert ex.status == Status.COMPENSATED
    assert steps_of(ledger_path, ex.id, "comp-done") == ["s2", "s1"]
    assert {e.step for e in events(ledger_path, ex.id, "comp-start")} == {"s1", "s2"}
    assert not events(ledger_path, ex.id, "step-start", "s4")
    assert journal(ex) == [
        ("start", ""), ("node", "s1"), ("node", "s2"), ("failure", "s3"),
        ("compensation", "s2"), ("compensation", "s1"),
    ]  # fmt: skip
    assert_one_checkpoint_per_visit(ex.history())
    # Each undo ran on the state its own step committed.
    assert {e.step: e.done for e in events(ledger_path, ex.id, "comp-done")} == {
        "s2": "s1,s2",
        "s1": "s1",
    }

    # Retries and backoff per policy: a flaky step, a step failing for good, a flaky undo.
    gaps = {
        "s2": check_gaps(events(ledger_path, ex.id, "step-start", "s2"), TRIP_RETRY),
        "s3": check_gaps(events(ledger_path, ex.id, "step-start", "s3"), TRIP_RETRY),
        "undo s2": check_gaps(
            events(ledger_path, ex.id, "comp-start", "s2"), TRIP_COMPENSATION_RETRY
        ),
    }
    print("\nretry gaps (s):", {k: [round(g, 3) for g in v] for k, v in gaps.items()})
    assert [e.attempt for e in events(ledger_path, ex.id, "step-start", "s3")] == [1, 2, 3]
    assert [e.attempt for e in events(ledger_path, ex.id, "comp-start", "s1")] == [1]
    # Attempts as the database counted them: failures recorded per visit.
    assert attempts_in_db(durable, ex, "node", "s1") == 0
    assert attempts_in_db(durable, ex, "node", "s2") == 2
    assert attempts_in_db(durable, ex, "node", "s3") == TRIP_RETRY.max_attempts
    assert attempts_in_db(durable, ex, "compensation", "s2") == 2
    assert attempts_in_db(durable, ex, "compensation", "s1") == 0
    meta = {cp.node: cp.meta for cp in ex.history() if cp.kind == "compensation"}
    assert meta["s2"] is not None and meta["s2"]["attempt"] == 3
    assert meta["s1"] is not None and meta["s1"]["attempt"] == 1


def test_kill_during_a_compensation_reruns_only_that_one(
    durable: DurableApp, workers: Workers, ledger_path: Path
) -> None:
    """SIGKILL while s2's undo sleeps: a new worker undoes s2 again, then s1; s3's stays done."""
    first = workers.start()
    ex = durable.durable.start(durable.trip, {"fail_at": "s4", "compensation_sleep": {"s2": 2.0}})
    wait_for(lambda: events(ledger_path, ex.id, "comp-start", "s2"), RUN_TIMEOUT, what="s2's undo")
    first.kill()
    assert undone_in_db(ex) == ["s3"], "s3's undo committed, s2's had not"
    assert ex.status == Status.COMPENSATING

    workers.start()
    with pytest.raises(Compensated) as compensated:
        ex.wait(timeout=RUN_TIMEOUT)
    settle(ledger_path)

    assert compensated.value.node == "s4"
    starts = events(ledger_path, ex.id, "comp-start", "s2")
    assert len(starts) == 2, "the killed undo ran again"
    assert starts[0].pid != starts[1].pid
    assert steps_of(ledger_path, ex.id, "comp-done") == ["s3", "s2", "s1"], "each once"
    assert steps_of(ledger_path, ex.id, "comp-start") == ["s3", "s2", "s2", "s1"]
    assert undone_in_db(ex) == ["s3", "s2", "s1"]
    assert_one_checkpoint_per_visit(ex.history())
    assert journal(ex)[-4:] == [
        ("failure", "s4"), ("compensation", "s3"), ("compensation", "s2"), ("compensation", "s1"),
    ]  # fmt: skip


def test_compensation_failing_for_good_needs_intervention_until_retried(
    durable: DurableApp, workers: Workers, ledger_path: Path, tmp_path: Path
) -> None:
    """s2's undo fails while the flag file exists: needs_intervention, a signal in the worker,
    an ERROR log line; the operator removes the cause and retries: the saga compensates."""
    flag = tmp_path / "refunds-down"
    flag.touch()
    worker = workers.start()
    ex = durable.durable.start(durable.trip, {"fail_at": "s3", "blocked_while": {"s2": str(flag)}})
    with pytest.raises(NeedsIntervention) as stuck:
        ex.wait(timeout=RUN_TIMEOUT)

    assert stuck.value.node == "s2"
    assert ex.status == Status.NEEDS_INTERVENTION
    error = ex.error
    assert error is not None and error["compensating"] is True
    assert error["original"]["node"] == "s3"
    tries = events(ledger_path, ex.id, "comp-start", "s2")
    check_gaps(tries, TRIP_COMPENSATION_RETRY)
    assert len(tries) == TRIP_COMPENSATION_RETRY.max_attempts
    assert attempts_in_db(durable, ex, "compensation", "s2") == TRIP_COMPENSATION_RETRY.max_attempts
    assert not events(ledger_path, ex.id, "comp-start", "s1"), "s1's undo waits behind s2's"
    # The worker (a pool process, not this test) sent intervention_required, and logged it.
    wait_for(lambda: signals(ledger_path, ex.id), 10, what="the intervention_required signal")
    ((_, _, step, pid),) = signals(ledger_path, ex.id)
    assert step == "s2" and int(pid) != os.getpid()

    def error_lines() -> list[str]:
        return [
            line
            for line in worker.output().splitlines()
            if "ERROR" in line and ex.id in line and "needs intervention" in line
        ]

    wait_for(error_lines, 10, what="the worker's ERROR log line")
    assert len(error_lines()) == 1 and "s2" in error_lines()[0]

    flag.unlink()  # the fix
    ex.retry(by="ops", reason="refunds back")
    with pytest.raises(Compensated) as compensated:
        ex.wait(timeout=RUN_TIMEOUT)
    settle(ledger_path)

    assert compensated.value.node == "s3"  # the original error again
    assert [e.attempt for e in events(ledger_path, ex.id, "comp-start", "s2")] == [1, 2, 3, 1]
    assert steps_of(ledger_path, ex.id, "comp-done") == ["s2", "s1"]
    assert len(signals(ledger_path, ex.id)) == 1
    assert len(error_lines()) == 1
    assert journal(ex)[-4:] == [
        ("intervention", "s2"), ("manual", "retry"), ("compensation", "s2"),
        ("compensation", "s1"),
    ]  # fmt: skip
    assert undone_in_db(ex) == ["s2", "s1"]
    assert_one_checkpoint_per_visit(ex.history())


def test_compensate_a_succeeded_saga_undoes_every_step_newest_first(
    durable: DurableApp, workers: Workers, ledger_path: Path
) -> None:
    workers.start()
    ex = durable.durable.start(durable.trip, {})
    assert ex.wait(timeout=RUN_TIMEOUT).done == list(TRIP_STEPS)  # type: ignore[attr-defined]
    ex.compensate("customer returned it", by="support")
    with pytest.raises(Compensated) as compensated:
        ex.wait(timeout=RUN_TIMEOUT)
    settle(ledger_path)

    assert compensated.value.error["type"] == "CompensationRequested"
    assert compensated.value.error["message"] == "customer returned it"
    assert steps_of(ledger_path, ex.id, "comp-start") == ["s4", "s3", "s2", "s1"]
    assert steps_of(ledger_path, ex.id, "comp-done") == ["s4", "s3", "s2", "s1"]
    assert {e.step: e.done for e in events(ledger_path, ex.id, "comp-done")} == {
        "s4": "s1,s2,s3,s4",
        "s3": "s1,s2,s3",
        "s2": "s1,s2",
        "s1": "s1",
    }
    request = [cp for cp in ex.history() if cp.kind == "manual"]
    assert len(request) == 1 and request[0].meta is not None
    assert (request[0].meta["op"], request[0].meta["by"], request[0].meta["reason"]) == (
        "compensate", "support", "customer returned it",
    )  # fmt: skip
    assert journal(ex)[5:] == [
        ("manual", "compensate"), ("compensation", "s4"), ("compensation", "s3"),
        ("compensation", "s2"), ("compensation", "s1"),
    ]  # fmt: skip
    assert_one_checkpoint_per_visit(ex.history())


def test_compensate_a_running_saga_undoes_the_step_in_flight_after_it_commits(
    durable: DurableApp, workers: Workers, ledger_path: Path
) -> None:
    workers.start()
    ex = durable.durable.start(durable.trip, {"step_sleep": {"s2": 2.0}})
    wait_for(lambda: events(ledger_path, ex.id, "step-start", "s2"), RUN_TIMEOUT, what="s2")
    ex.compensate("fraud suspected", by="risk")
    assert ex.status == Status.COMPENSATING
    assert journal(ex) == [("start", ""), ("node", "s1"), ("manual", "compensate")]
    with pytest.raises(Compensated) as compensated:
        ex.wait(timeout=RUN_TIMEOUT)
    settle(ledger_path)

    assert compensated.value.error["message"] == "fraud suspected"
    assert steps_of(ledger_path, ex.id, "step-done") == ["s1", "s2"]
    assert not events(ledger_path, ex.id, "step-start", "s3"), "nothing after s2 runs"
    assert not events(ledger_path, ex.id, "step-start", "s4")
    assert steps_of(ledger_path, ex.id, "comp-done") == ["s2", "s1"]
    assert journal(ex) == [
        ("start", ""), ("node", "s1"), ("manual", "compensate"), ("node", "s2"),
        ("compensation", "s2"), ("compensation", "s1"),
    ]  # fmt: skip
    assert_one_checkpoint_per_visit(ex.history())


# -- regressions: a long undo holds a lease; a due retry runs after compensate() -------------


def test_a_long_compensation_is_not_run_twice_by_the_recovery_sweep(
    durable: DurableApp, workers: Workers, ledger_path: Path
) -> None:
    """s1's undo runs 6 s, past stale_after (2 s): the sweep must leave the live attempt be,
    as it does for a long node (which holds a lease), not publish a second copy of it."""
    workers.start(
        extra_env={
            "CELERY_DURABLE_STALE_AFTER": "2",
            "CELERY_DURABLE_LEASE_AFTER": "0.5",
            "CELERY_DURABLE_LEASE_TTL": "3",
        }
    )
    ex = durable.durable.start(
        durable.trip, {"fail_at": "s2", "no_retry": True, "compensation_sleep": {"s1": 6.0}}
    )
    with pytest.raises(Compensated):
        ex.wait(timeout=RUN_TIMEOUT)
    settle(ledger_path, quiet=2.0)
    assert undone_in_db(ex) == ["s1"]
    starts = events(ledger_path, ex.id, "comp-start", "s1")
    assert len(starts) == 1, f"a healthy undo ran {len(starts)} times: {starts}"


def test_a_step_retry_waiting_in_the_database_runs_when_due_after_compensate(
    durable: DurableApp, workers: Workers, ledger_path: Path
) -> None:
    """h2 failed once; its retry (3 s) waits in the database (eta_threshold 1 s). compensate()
    keeps h2 in flight, so the sweep must still dispatch that retry when it is due: h2 commits,
    then h2 and h1 are undone, within seconds, not after stale_after."""
    workers.start(
        extra_env={"CELERY_DURABLE_ETA_THRESHOLD": "1", "CELERY_DURABLE_STALE_AFTER": "30"}
    )
    ex = durable.durable.start(durable.hold, {"flaky": {"h2": 1}})

    def retry_waits_in_db() -> bool:
        visit = durable.durable.visits.get(ex.id, "node", "h2", 1)
        return visit is not None and visit.due_at is not None

    wait_for(retry_waits_in_db, RUN_TIMEOUT, what="h2's retry to wait in the database")
    ex.compensate("fraud suspected")
    assert retry_waits_in_db(), "compensate() came after the sweep claimed the retry"
    failed_at = events(ledger_path, ex.id, "step-fail", "h2")[0].at
    with pytest.raises(Compensated):
        ex.wait(timeout=HOLD_RETRY.initial_delay + 5)
    retried = events(ledger_path, ex.id, "step-start", "h2")[1]
    assert retried.at - failed_at <= HOLD_RETRY.initial_delay + 2.5
    assert steps_of(ledger_path, ex.id, "comp-done") == ["h2", "h1"]
