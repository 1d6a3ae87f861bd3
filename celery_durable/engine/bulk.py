"""One operation over a selection of runs: applied run by run, each an audited commit of its
own, so one refusal stops nothing else; what was done and what was refused, and why, come
back in one report.

A dry run changes nothing: it says which runs the operation would be applied to (their status
allows it) and which it would refuse.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from celery_durable.engine.execution import Execution
from celery_durable.engine.operations import ALLOWED
from celery_durable.engine.versions import UPGRADABLE
from celery_durable.errors import DurableError, InvalidInput
from celery_durable.status import Status

# What an operation does to one run: Execution's method, given by= and reason=.
Apply = Callable[[Execution, str | None, str | None], Any]

OPERATIONS: dict[str, tuple[frozenset[Status], Apply]] = {
    "pause": (ALLOWED["pause"], lambda ex, by, why: ex.pause(by=by, reason=why)),
    "resume": (ALLOWED["resume"], lambda ex, by, why: ex.resume(by=by, reason=why)),
    "cancel": (ALLOWED["cancel"], lambda ex, by, why: ex.cancel(by=by, reason=why)),
    "retry": (ALLOWED["retry"], lambda ex, by, why: ex.retry(by=by, reason=why)),
    "compensate": (ALLOWED["compensate"], lambda ex, by, why: ex.compensate(why, by=by)),
    "upgrade": (UPGRADABLE, lambda ex, by, why: ex.upgrade(by=by, reason=why)),
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
    runs: Iterable[Execution],
    *,
    by: str | None = None,
    reason: str | None = None,
    dry_run: bool = False,
) -> BulkReport:
    """``operation`` on each of ``runs``, one by one; a refusal is reported, not raised."""
    if operation not in OPERATIONS:
        raise InvalidInput(
            "<bulk>",
            f"no bulk operation {operation!r}; use one of {', '.join(sorted(OPERATIONS))}",
        )
    allowed, act = OPERATIONS[operation]
    report = BulkReport(operation, dry_run)
    for run in runs:
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
