"""The failure stage: an attempt that failed is counted in the database, then retried after
its policy's backoff or given up, which each kind of attempt defines (node: fail the run, stop
it for an operator, or compensate; compensation: stop for an operator).

It runs after the attempt's own stages, never inside a commit: a stage that fails returns a
``Failure``, and the pipeline hands it here.
"""

from __future__ import annotations

import logging
import random
import traceback
from dataclasses import dataclass
from datetime import timedelta

from celery_durable.engine.attempt import Attempt, Outcome
from celery_durable.model.records import ErrorRecord, utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Failure:
    """What went wrong in an attempt, and whether no retry can fix it."""

    error: BaseException
    permanent: bool = False


def fail(run: Attempt, failure: Failure) -> Outcome:
    """Count the failure in the database; retry per the attempt's policy or give up."""
    exc, policy, visits = failure.error, run.policy, run.runtime.visits
    run.failed = exc
    error = describe(exc, run.name, run.attempt)
    if failure.permanent or not policy.should_retry(exc, run.attempt):
        visits.record_failure(*run.key, error=dict(error), due_at=None)
        return run.give_up(error)
    delay = policy.next_delay(run.attempt, random.Random())
    in_db = delay > run.runtime.settings.eta_threshold
    due_at = utcnow() + timedelta(seconds=delay) if in_db else None
    attempts = visits.record_failure(*run.key, error=dict(error), due_at=due_at)
    if attempts >= policy.max_attempts:
        # Another copy counted attempts too: the database says this was the last one.
        if in_db:
            visits.clear_due(*run.key)
        return run.give_up(error)
    run.runtime.hooks.node_retrying(run.graph.name, run.name, exc, delay)
    logger.warning(
        "%s %s.%s visit %d attempt %d failed (%s); retry in %.2fs",
        run.kind,
        run.graph.name,
        run.name,
        run.visit,
        attempts,
        error["message"],
        delay,
    )
    if not in_db:
        run.redispatch(attempts + 1, delay)
    run.retry_in = delay
    return Outcome.RETRYING


def needs_intervention(run: Attempt, error: ErrorRecord, what: str) -> Outcome:
    """The run stopped for an operator (its commit landed): say so loudly, in the log, the
    signal and the hooks. ``what`` says what failed for good."""
    logger.error(
        "execution %s of %s needs intervention: %s %s failed for good: %s. Fix the cause, "
        "then retry it (durable retry %s), or mark %r done by hand (durable skip %s %s).",
        run.execution_id,
        run.graph.name,
        what,
        run.name,
        error["message"],
        run.execution_id,
        run.name,
        run.execution_id,
        run.name,
    )
    run.runtime.announcer.announce_intervention(run.execution_id, run.graph.name, run.name, error)
    return Outcome.NEEDS_INTERVENTION


def describe(exc: BaseException, node: str, attempt: int) -> ErrorRecord:
    """An error as stored: type, message, where, which attempt, and the end of the traceback."""
    tb = "".join(traceback.format_exception(exc, limit=8))
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "node": node,
        "attempt": attempt,
        "traceback": tb[-4000:],
    }
