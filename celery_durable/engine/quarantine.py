"""A run whose row cannot be trusted is set aside, and only that run.

The engine works on many rows at once (timers, the recovery sweep) and on one row per
attempt. A row that fails its checksum must neither stop the others nor be acted on: the run
stops as needs_intervention with the damage named, an ERROR line, the intervention signal,
hook and metric, and every other row goes on. Nothing is decided from it, and its checksum is
not made to fit, so only an operator's restart from a checkpoint that verifies (which rewrites
the row) carries it on.
"""

from __future__ import annotations

import logging

from celery_durable.engine.runtime import Runtime
from celery_durable.errors import CheckpointCorrupted
from celery_durable.model.records import error_record, utcnow

logger = logging.getLogger(__name__)

STEP = "integrity"


def set_aside(runtime: Runtime, damage: CheckpointCorrupted) -> bool:
    """Stop ``damage``'s run for an operator; False when it had ended or was already set
    aside."""
    execution_id = damage.execution_id
    error = error_record(type(damage).__name__, str(damage), STEP)
    graph = runtime.store.set_aside(execution_id, error, utcnow())
    if graph is None:
        return False
    logger.error("execution %s set aside, needs intervention: %s", execution_id, damage)
    runtime.announcer.announce_intervention(execution_id, graph, STEP, error)
    return True
