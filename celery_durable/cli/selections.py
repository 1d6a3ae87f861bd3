"""One operation on many runs: ``durable retry --status failed --graph order --since 2h``.

The commands that operate a run (pause, resume, cancel, retry, compensate, upgrade) take a
selection instead of its id. The runs are applied to one by one through ``Durable.bulk``,
each its own audited commit; a refusal stops nothing else. ``--dry-run`` lists what would be
done and refused, changing nothing. A long selection shows its progress on stderr; the
summary says what was done and what was refused, and why.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from celery_durable.cli.broker import not_told, unsent_revokes
from celery_durable.cli.common import Obj, emit, parse_age, status_option, tag_option
from celery_durable.engine.bulk import BulkReport
from celery_durable.model.tags import spelled

F = TypeVar("F", bound=Callable[..., Any])
SELECTION_HELP = (
    " Instead of EXECUTION_ID, a selection (--status, --graph, --since, --tag) applies it to every "
    "run that matches, each audited; --dry-run says what would be done and refused, changing "
    "nothing. Exit 1 when any run is (or would be) refused."
)
# A selection at least this long shows its progress as it goes.
LONG = 20
# Refusals listed one by one in the summary; the rest are counted (--json has them all).
LISTED = 50


@dataclass(frozen=True)
class Selection:
    """The runs an operation is for: those that match every filter given."""

    status: tuple[str, ...] = ()
    graph: str | None = None
    since: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def given(self) -> bool:
        return (
            bool(self.status) or self.graph is not None or self.since is not None or bool(self.tags)
        )

    def __str__(self) -> str:
        words = [f"--status {s}" for s in self.status]
        words += [f"--graph {self.graph}"] if self.graph is not None else []
        words += [f"--since {self.since}"] if self.since is not None else []
        words += [f"--tag {tag}" for tag in spelled(self.tags)]
        return " ".join(words)

    def filters(self) -> dict[str, Any]:
        """What ``Durable.bulk`` selects by."""
        since = datetime.now(UTC) - parse_age(self.since) if self.since else None
        return {
            "status": list(self.status) or None,
            "graph": self.graph,
            "since": since,
            "tags": self.tags or None,
        }


def selection_options(command: F) -> F:
    """``--status``, ``--graph``, ``--since``, ``--tag``, ``--dry-run``: a selection instead
    of an id."""
    for option in reversed(
        [
            status_option,
            click.option("--graph", default=None, help="With a selection: only this graph."),
            click.option(
                "--since", default=None, help="With a selection: started within 15m, 2h, 7d."
            ),
            tag_option,
            click.option(
                "--dry-run",
                is_flag=True,
                help="Say what would be done and refused; change nothing.",
            ),
        ]
    ):
        command = option(command)
    return command


def if_selected(
    ctx: click.Context,
    operation: str,
    execution_id: str | None,
    selection: Selection,
    dry_run: bool,
    **options: Any,
) -> None:
    """With a selection (or ``--dry-run``), apply ``operation`` to it and exit; return when the
    command is for the one run EXECUTION_ID. An id and a selection together, or neither, is
    a usage error. ``options``: ``by``, ``reason``, ``as_json``."""
    if execution_id is not None and selection.given:
        raise click.UsageError(
            f"give either EXECUTION_ID or a selection ({selection}), not both: one run, or "
            "every run that matches"
        )
    if execution_id is None and not selection.given:
        raise click.UsageError(
            "give an EXECUTION_ID, or a selection of runs: --status, --graph, --since, --tag "
            "(durable ls takes the same filters)"
        )
    if execution_id is not None and not dry_run:
        return
    target = [execution_id] if execution_id is not None else selection
    with unsent_revokes() as unsent:
        report = run(ctx.obj, operation, target, dry_run=dry_run, **options)
    if unsent:
        click.echo(not_told(ctx.obj, None, unsent), err=True)
    ctx.exit(1 if report.refused else 0)


def run(
    obj: Obj,
    operation: str,
    target: Selection | list[str],
    *,
    by: str | None,
    reason: str | None,
    dry_run: bool,
    as_json: bool,
) -> BulkReport:
    """``operation`` on every run of ``target`` (a selection, or ids); prints the summary.

    The selection is read once, by a dry run, so its size is known for the progress shown,
    then applied run by run (each run's status is looked at again as it comes).
    """
    durable = obj.durable
    chosen = {"ids": target} if isinstance(target, list) else target.filters()
    plan = durable.bulk(operation, **chosen, by=by, reason=reason, dry_run=True)
    if plan.selected == 0:
        raise click.ClickException(
            f"no run matches {target}; nothing was changed. durable ls {target} lists "
            "the runs a selection finds."
        )
    report = plan
    if not dry_run:
        ids = [*plan.done, *plan.refused]
        counted = _counted(ids, operation) if len(ids) >= LONG else ids
        report = durable.bulk(operation, ids=counted, by=by, reason=reason)
    emit(report.as_dict(), as_json, lambda: summary(report))
    return report


def _counted(ids: list[str], operation: str) -> Iterator[str]:
    """``ids``, showing on stderr how many were done as each next one is asked for: a line
    redrawn on a terminal, a line per tenth elsewhere (a log)."""
    total = len(ids)
    live = sys.stderr.isatty()
    tenth = max(total // 10, 1)

    def shown(done: int) -> None:
        line = f"{operation}: {done}/{total} runs ({100 * done // total}%)"
        if live:
            click.echo(f"\r{line}", nl=done == total, err=True)
        elif done % tenth == 0 or done == total:
            click.echo(line, err=True)

    for done, run_id in enumerate(ids):
        if done:
            shown(done)
        yield run_id
    shown(total)


def summary(report: BulkReport) -> str:
    """What was done (in a dry run: would be, each run named) and what was refused, and why."""
    op = report.operation
    lines = []
    if report.dry_run:
        lines.append(
            f"dry run: {op} would be applied to {len(report.done)} of {report.selected} "
            f"selected runs and refused for {len(report.refused)}; nothing was changed"
        )
        lines += [f"  would {op}: {run_id}" for run_id in report.done]
    else:
        lines.append(
            f"{op}: done for {len(report.done)} of {report.selected} selected runs, refused "
            f"for {len(report.refused)}"
        )
    refused = list(report.refused.items())
    lines += [f"  refused {run_id}: {why}" for run_id, why in refused[:LISTED]]
    if len(refused) > LISTED:
        lines.append(f"  ... and {len(refused) - LISTED} more refused (--json lists them all)")
    return "\n".join(lines)
