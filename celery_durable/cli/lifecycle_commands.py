"""Runs' data by hand: delete a run before retention would, export runs to JSON lines and
import them back. Each calls the public method of the same name on Durable."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import click

from celery_durable import DurableError, Status
from celery_durable.cli import selections, words
from celery_durable.cli.common import (
    Obj,
    by_option,
    emit,
    json_option,
    parse_age,
    reason_option,
    status_option,
    tag_option,
)
from celery_durable.cli.selections import Selection, selection_options
from celery_durable.engine.bulk import BulkReport

# Runs between two redraws of a count shown on a terminal.
TICK = 100


@click.command("delete")
@click.argument("execution_ids", nargs=-1)
@selection_options
@click.option(
    "--force",
    is_flag=True,
    help="Cancel a run that has not finished (and its running children), then delete it. "
    "Runs named by id only.",
)
@click.option("--yes", is_flag=True, help="Delete a selection without asking first.")
@by_option
@reason_option
@json_option
@click.pass_context
def delete(
    ctx: click.Context,
    execution_ids: tuple[str, ...],
    status: tuple[str, ...],
    graph: str | None,
    since: str | None,
    tags: dict[str, str],
    dry_run: bool,
    force: bool,
    yes: bool,
    by: str | None,
    reason: str | None,
    as_json: bool,
) -> None:
    """Delete runs now, each with the child runs it started and every row of each: an
    erasure request. Refused for a run that has not finished unless --force. Logged at
    WARNING with --by and --reason (the rows are gone). Instead of ids, a selection
    (--status, --graph, --since, --tag) deletes the finished runs that match, after asking
    (--yes: without); --dry-run says what would be deleted and refused. Exit 1 when any
    run is (or would be) refused."""
    obj: Obj = ctx.obj
    selection = Selection(status, graph, since, tags)
    if execution_ids and selection.given:
        raise click.UsageError(f"give either ids or a selection ({selection}), not both")
    if not selection.given:
        if not execution_ids:
            raise click.UsageError("give the ids of the runs to delete, or a selection")
        report = _delete_each(obj, execution_ids, by, reason, force=force, dry_run=dry_run)
        emit(report.as_dict(), as_json, lambda: _deleted(report))
        ctx.exit(1 if report.refused else 0)
    if force:
        raise click.UsageError(
            "--force applies to runs named by id; a selection deletes finished runs only "
            f"(cancel the others first: durable cancel {selection})"
        )
    if not (dry_run or yes):
        plan = obj.durable.bulk("delete", **selection.filters(), dry_run=True)
        if plan.done:
            click.confirm(
                f"Delete {len(plan.done)} finished runs that match {selection}, with their "
                "child runs and every row of each? This cannot be undone",
                abort=True,
                err=True,
            )
    done = selections.run(
        obj, "delete", selection, by=by, reason=reason, dry_run=dry_run, as_json=as_json
    )
    ctx.exit(1 if done.refused else 0)


@dataclass
class _Deleted:
    """A delete by ids: the runs that went (or would go) with each id, and those refused."""

    dry_run: bool
    went: dict[str, list[str]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"operation": "delete", **asdict(self)}


def _delete_each(
    obj: Obj,
    ids: Iterable[str],
    by: str | None,
    reason: str | None,
    *,
    force: bool,
    dry_run: bool,
) -> _Deleted:
    report = _Deleted(dry_run)
    for execution_id in ids:
        try:
            report.went[execution_id] = obj.durable.delete(
                execution_id, by=by, reason=reason, force=force, dry_run=dry_run
            )
        except DurableError as refused:
            report.refused[execution_id] = words.of_error(refused)
    return report


def _deleted(report: _Deleted) -> str:
    verb = "would delete" if report.dry_run else "deleted"
    lines = []
    for execution_id, went in report.went.items():
        below = went[1:]
        children = f", with {len(below)} child run(s): {', '.join(below)}" if below else ""
        lines.append(f"{execution_id}: {verb}{children}")
    lines += [f"refused {run}: {why}" for run, why in report.refused.items()]
    if report.dry_run:
        lines.append("dry run: nothing was deleted")
    return "\n".join(lines)


@click.command("export")
@click.argument("execution_ids", nargs=-1)
@status_option
@click.option("--graph", default=None, help="Only runs of this graph.")
@click.option("--since", default=None, help="Only runs started within 15m, 2h, 7d.")
@tag_option
@click.option("--all", "every", is_flag=True, help="Every run (a full backup).")
@click.option(
    "-o",
    "--output",
    default="-",
    show_default=True,
    help="The file to write (written whole or not at all); -: standard output.",
)
@json_option
@click.pass_context
def export(
    ctx: click.Context,
    execution_ids: tuple[str, ...],
    status: tuple[str, ...],
    graph: str | None,
    since: str | None,
    tags: dict[str, str],
    every: bool,
    output: str,
    as_json: bool,
) -> None:
    """Write runs as JSON lines, one per run with its rows and checksums, for `durable
    import`: the ids given, or the runs that match --status, --graph, --since, --tag (or
    --all),
    each with its child runs. A run that fails its checksums is refused, not written; exit
    1 when any is."""
    chosen = Selection(tuple(str(s) for s in Status) if every else status, graph, since, tags)
    if execution_ids and chosen.given:
        raise click.UsageError(f"give either ids or a selection ({chosen}), not both")
    if not (execution_ids or chosen.given):
        raise click.UsageError("give the ids of the runs to export, a selection, or --all")
    cutoff = datetime.now(UTC) - parse_age(since) if since else None
    filters = {"status": list(chosen.status) or None, "graph": graph, "since": cutoff, "tags": tags}
    with click.open_file(output, "w", encoding="utf-8", atomic=output != "-") as out:
        counted = _Counter("export", out.write)
        report = ctx.obj.durable.export(execution_ids or None, to=counted, **filters)
        counted.close()
    _summary(report, as_json, err=output == "-")
    ctx.exit(1 if report.refused else 0)


@click.command("import")
@click.argument("files", nargs=-1, required=True, type=click.File("r", encoding="utf-8"))
@json_option
@click.pass_context
def import_runs(ctx: click.Context, files: tuple[IO[str], ...], as_json: bool) -> None:
    """Restore the runs of FILES, written by `durable export` or prune --archive-to (-:
    standard input). Each line is checked against its checksums before anything of its run
    is written; a run whose id this database holds is refused, never overwritten. Exit 1
    when any run is refused."""
    report = BulkReport("import", dry_run=False)
    for file in files:
        done = ctx.obj.durable.import_runs(_counted(file, "import"))
        report.done += done.done
        where = f"{file.name} " if len(files) > 1 else ""
        report.refused |= {f"{where}{line}": why for line, why in done.refused.items()}
    _summary(report, as_json)
    ctx.exit(1 if report.refused else 0)


def _summary(report: BulkReport, as_json: bool, *, err: bool = False) -> None:
    """What was exported or imported and what was refused, and why; on stderr when stdout
    carries the lines."""
    verb = {"export": "exported", "import": "imported"}[report.operation]
    lines = [f"{verb} {len(report.done)} runs, refused {len(report.refused)}"]
    lines += [f"  refused {where}: {why}" for where, why in report.refused.items()]
    said = json.dumps(report.as_dict(), indent=2) if as_json else "\n".join(lines)
    click.echo(said, err=err)


class _Counter:
    """A file-like ``write`` that counts the lines written, shown on a terminal."""

    def __init__(self, what: str, write: Callable[[str], object]) -> None:
        self.what, self._write, self.count = what, write, 0

    def write(self, line: str) -> None:
        self._write(line)
        self.count += 1
        _shown(self.what, self.count)

    def close(self) -> None:
        _shown(self.what, self.count, last=True)


def _counted(lines: Iterable[str], what: str) -> Iterator[str]:
    count = 0
    for count, line in enumerate(lines, 1):
        yield line
        _shown(what, count)
    _shown(what, count, last=True)


def _shown(what: str, count: int, *, last: bool = False) -> None:
    """How far a long export or import is, redrawn on stderr when it is a terminal."""
    if not sys.stderr.isatty() or not (last or (count and count % TICK == 0)):
        return
    click.echo(f"\r{what}: {count} runs", nl=last, err=True)
