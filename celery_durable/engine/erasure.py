"""Deleting a run before retention would: an erasure request, a run started by mistake.

A run goes with the child runs it started (theirs too): a child holds the parent's data and
is found through it. Deleting leaves nothing of the run in the database, so what remains is
a log line at WARNING (who, why, which runs) and a count (the ``execution_deleted`` hook,
``celery_durable_executions_deleted_total`` with metrics on).

A run that has not finished (or a child of it) is refused: its workers would find their
rows gone. ``force`` cancels it first, with its running children (nothing new is dispatched,
tasks in flight are revoked), then deletes. A run cancel refuses (one compensating) is
deleted all the same under ``force``; a task of it still in flight fails to commit.
"""

from __future__ import annotations

import contextlib
import logging

from celery_durable.engine.actors import actor
from celery_durable.engine.operations import ALLOWED, Operations
from celery_durable.engine.runtime import Runtime
from celery_durable.errors import DurableError, RunStillActive
from celery_durable.persistence import run_rows
from celery_durable.persistence.run_rows import Member

logger = logging.getLogger(__name__)


def delete(
    runtime: Runtime,
    execution_id: str,
    *,
    by: str | None = None,
    reason: str | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> list[str]:
    """Delete a run and the runs below it, every row of each, in one transaction; returns
    their ids (the run first). ``dry_run``: the ids it would delete, nothing changed."""
    db = runtime.store.db
    if dry_run or force:
        members = run_rows.family(db, execution_id)
        active = {m.id: str(m.status) for m in members if not m.status.finished}
        if dry_run and active and not force:
            raise RunStillActive(execution_id, active)
        if dry_run:
            return [m.id for m in members]
        _cancel(runtime, members, by, reason)
    members = run_rows.erase(db, execution_id, only_finished=not force)
    ids, who = [m.id for m in members], actor(by)
    logger.warning(
        "deleted execution %s and %d run(s) below it, every row of each, by %s (%s): %s",
        execution_id,
        len(ids) - 1,
        who,
        reason or "no reason given",
        ", ".join(ids),
        extra={
            "execution_id": execution_id,
            "graph": members[0].graph,
            "deleted": ids,
            "by": who,
            "reason": reason,
        },
    )
    for member in members:
        runtime.hooks.execution_deleted(member.id, member.graph, member.status)
    return ids


def _cancel(runtime: Runtime, members: list[Member], by: str | None, reason: str | None) -> None:
    """Cancel what still runs, parents first (a parent's cancel takes its running children
    with it); what cannot be cancelled is deleted all the same."""
    operations = Operations(runtime)
    why = f"deleted: {reason}" if reason else "deleted"
    for member in members:
        if member.status.finished or member.status not in ALLOWED["cancel"]:
            continue
        with contextlib.suppress(DurableError):
            operations.cancel(member.id, by=by, reason=why)
