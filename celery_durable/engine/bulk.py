"""One operation over a selection of runs: applied run by run, each an audited commit of its
own, so one refusal stops nothing else; what was done and what was refused, and why, come
back in one report.

A dry run changes nothing: it says which runs the operation would be applied to (their status
allows it) and which it would refuse.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from celery_durable.engine import erasure
from celery_durable.engine.execution import Execution
from celery_durable.engine.operations import ALLOWED
from celery_durable.engine.runtime import Runtime
from celery_durable.engine.versions import UPGRADABLE
from celery_durable.errors import DurableError, ExecutionNotFound, InvalidInput
from celery_durable.model.tags import checked
from celery_durable.status import FINISHED, Status

# Runs read per page by a selection.
PAGE = 500

# What an operation does to one run: Execution's method, given by= and reason=.
Apply = Callable[[Execution, str | None, str | None], Any]

OPERATIONS: dict[str, tuple[frozenset[Status], Apply]] = {
    "pause": (ALLOWED["pause"], lambda ex, by, why: ex.pause(by=by, reason=why)),
    "resume": (ALLOWED["resume"], lambda ex, by, why: ex.resume(by=by, reason=why)),
    "cancel": (ALLOWED["cancel"], lambda ex, by, why: ex.cancel(by=by, reason=why)),
    "retry": (ALLOWED["retry"], lambda ex, by, why: ex.retry(by=by, reason=why)),
    "compensate": (ALLOWED["compensate"], lambda ex, by, why: ex.compensate(why, by=by)),
    "upgrade": (UPGRADABLE, lambda ex, by, why: ex.upgrade(by=by, reason=why)),
    # Finished runs only: forcing (cancelling first) is for runs named one by one.
    "delete": (
        FINISHED,
        lambda ex, by, why: erasure.delete(ex.runtime, ex.id, by=by, reason=why),
    ),
}


@dataclass(slots=True)
class BulkReport:
    """``done``: the runs the operation was applied to (or would be, in a dry run);
    ``refused``: run id -> why not."""

    operation: str
    dry_run: bool
    done: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def selected(self) -> int:
        return len(self.done) + len(self.refused)

    def as_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "dry_run": self.dry_run,
            "selected": self.selected,
            "done": self.done,
            "refused": self.refused,
        }


def apply(
    operation: str,
    runs: Iterable[Execution | str],
    *,
    by: str | None = None,
    reason: str | None = None,
    dry_run: bool = False,
) -> BulkReport:
    """``operation`` on each of ``runs``, one by one (an id: one with no run); a refusal is
    reported, not raised."""
    if operation not in OPERATIONS:
        raise InvalidInput(
            "<bulk>",
            f"no bulk operation {operation!r}; use one of {', '.join(sorted(OPERATIONS))}",
        )
    allowed, act = OPERATIONS[operation]
    report = BulkReport(operation, dry_run)
    for run in runs:
        if isinstance(run, str):
            report.refused[run] = "no such run"
            continue
        status = run.record.status
        if status not in allowed:
            report.refused[run.id] = f"{operation} does not apply to a run that is {status}"
            continue
        if dry_run:
            report.done.append(run.id)
            continue
        try:
            act(run, by, reason)
        except DurableError as refused:
            report.refused[run.id] = str(refused)
        else:
            report.done.append(run.id)
    return report


def selection(
    runtime: Runtime,
    *,
    ids: Iterable[str] | None = None,
    status: Status | str | Iterable[Status | str] | None = None,
    graph: str | None = None,
    since: datetime | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[Execution | str]:
    """The runs ``ids`` names (an id with no run comes as itself, to be refused), or every
    run that matches the filters (at least one; ``tags``: every pair), newest first, a page
    at a time (keyset paging: runs started meanwhile neither shift nor repeat a page)."""
    if ids is None and status is None and graph is None and since is None and not tags:
        raise InvalidInput(
            "<bulk>",
            "select runs with ids, status, graph, since or tags (none would mean every run)",
        )
    wanted = None if tags is None else checked(tags)
    if ids is not None:
        for execution_id in ids:
            try:
                record = runtime.store.get_execution(execution_id)
            except ExecutionNotFound:
                yield execution_id
            else:
                yield Execution(runtime, record.id, record)
        return
    before: tuple[datetime, str] | None = None
    while True:
        page = runtime.store.list_executions(
            status=status, graph=graph, since=since, before=before, limit=PAGE, tags=wanted
        )
        yield from (Execution(runtime, r.id, r) for r in page)
        if len(page) < PAGE:
            return
        before = (page[-1].created_at, page[-1].id)
