"""Graph versions from the command line: each version of each graph as this code, the live
workers and the stored runs know it, and how far its runs have drained; and moving a run onto
another version.

A version is drained when none of its runs is unfinished (pending, running, paused, waiting,
compensating, needs_intervention): its code may then leave the deploy. A failed run counts as
finished; retried after its version left, it stops for ``durable upgrade``.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

import click

from celery_durable import Durable, Graph, Status
from celery_durable.cli import selections
from celery_durable.cli.common import Obj, by_option, emit, json_option, reason_option
from celery_durable.cli.selections import SELECTION_HELP, Selection, selection_options

# Unfinished statuses first: what keeps a version from being drained.
ORDER = [s for s in Status if not s.finished] + [s for s in Status if s.finished]
UNPINNED = "(unpinned)"
# Workers named in the table; the JSON has them all.
NAMED_WORKERS = 3
WIDTH = 100
STRANDED = "No live worker serves these versions, which have unfinished runs:"
WHAT_TO_DO = (
    "They stop as needs_intervention when they go on. Deploy a worker with their version "
    "again, or move each with durable upgrade ID [--version V] (durable ls --graph G --json "
    "shows each run's graph_version)."
)


@dataclass(frozen=True)
class Serving:
    """A live worker serving a version, on the routing keys it consumes."""

    worker: str
    routing_keys: tuple[str, ...]


@dataclass(frozen=True)
class VersionRow:
    """One version of a graph. ``version`` None: runs started before runs were pinned; they
    run on the newest version a worker has, so every live worker of the graph serves them."""

    graph: str
    version: str | None
    in_code: bool
    newest: bool
    workers: tuple[Serving, ...]
    runs: dict[Status, int]

    @property
    def unfinished(self) -> int:
        return sum(n for status, n in self.runs.items() if not status.finished)

    @property
    def drained(self) -> bool:
        return self.unfinished == 0

    @property
    def deployed(self) -> bool:
        return bool(self.workers)

    def as_json(self) -> dict[str, Any]:
        return {
            "graph": self.graph,
            "version": self.version,
            "in_code": self.in_code,
            "newest": self.newest,
            "deployed": self.deployed,
            "workers": [
                {"worker": w.worker, "routing_keys": list(w.routing_keys)} for w in self.workers
            ],
            "runs": {str(status): n for status, n in self.runs.items()},
            "unfinished": self.unfinished,
            "drained": self.drained,
        }


def version_rows(durable: Durable, graph: str | None = None) -> list[VersionRow]:
    """Every version of every graph (or of ``graph``) that this code defines, a live worker
    serves or a stored run is pinned to: this code's newest first, then the others, then the
    unpinned runs."""
    code = {name: gs for name, gs in durable.versions.items() if graph in (None, name)}
    served: dict[tuple[str, str], list[Serving]] = {}
    for d in durable.deployments():
        if graph in (None, d.served.graph):
            key = (d.served.graph, d.served.version)
            served.setdefault(key, []).append(Serving(d.worker, d.routing_keys))
    runs = {key: n for key, n in durable.runs_by_version().items() if graph in (None, key[0])}
    names = set(code) | {g for g, _ in served} | {g for g, _, _ in runs}
    rows = []
    for name in sorted(names):
        mine = code.get(name, [])
        defined = [g.version for g in reversed(mine)]
        others = {v for g, v in served if g == name}
        others |= {v for g, v, _ in runs if g == name and v is not None}
        for version in [*defined, *sorted(others - set(defined))]:
            workers = served.get((name, version), [])
            rows.append(_row(name, version, mine, workers, runs))
        if any(g == name and v is None for g, v, _ in runs):
            # Every live worker of the graph runs them, on the newest version it has.
            anyone = {s.worker: s for (g, _), ss in served.items() if g == name for s in ss}
            rows.append(_row(name, None, mine, list(anyone.values()), runs))
    return rows


def _row(
    name: str,
    version: str | None,
    code: list[Graph],
    workers: list[Serving],
    runs: dict[tuple[str, str | None, Status], int],
) -> VersionRow:
    return VersionRow(
        graph=name,
        version=version,
        in_code=version is not None and any(g.version == version for g in code),
        newest=version is not None and bool(code) and code[-1].version == version,
        workers=tuple(workers),
        runs={s: runs[(name, version, s)] for s in ORDER if runs.get((name, version, s))},
    )


def table(rows: list[VersionRow]) -> str:
    if not rows:
        return "no graph versions: none defined in this code, served by a live worker or run"
    header = ("GRAPH", "VERSION", "CODE", "WORKERS", "RUNS")
    lines = [header] + [
        (
            r.graph,
            r.version or UNPINNED,
            "newest" if r.newest else "yes" if r.in_code else "-",
            _workers(r),
            _runs(r),
        )
        for r in rows
    ]
    # Every column padded but the last, the longest.
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    text = [
        "  ".join([*(cell.ljust(w) for cell, w in zip(line, widths, strict=False)), line[-1]])
        for line in lines
    ]
    stranded = [r for r in rows if r.version is not None and not r.deployed and not r.drained]
    if stranded:
        which = ", ".join(f"{r.graph}@{r.version} ({r.unfinished} unfinished)" for r in stranded)
        text += ["", textwrap.fill(f"{STRANDED} {which}. {WHAT_TO_DO}", WIDTH)]
    return "\n".join(text)


def _workers(row: VersionRow) -> str:
    if not row.workers:
        return "not deployed"
    names = [w.worker for w in row.workers]
    shown = ", ".join(names[:NAMED_WORKERS])
    if len(names) > NAMED_WORKERS:
        shown += f" +{len(names) - NAMED_WORKERS} more"
    keys = sorted({key for w in row.workers for key in w.routing_keys})
    return f"{shown} on {', '.join(keys)}" if keys else shown


def _runs(row: VersionRow) -> str:
    counts = ", ".join(f"{status} {n}" for status, n in row.runs.items())
    if not row.runs:
        return "no runs"
    return f"drained: {counts}" if row.drained else counts


@click.command("versions")
@click.option("--graph", default=None, help="Only this graph.")
@json_option
@click.pass_obj
def versions(obj: Obj, graph: str | None, as_json: bool) -> None:
    """Each graph's versions: defined in this code (and which is newest), served by which live
    workers, and their runs per status; "drained" when none of them is unfinished."""
    rows = version_rows(obj.durable, graph)
    emit([r.as_json() for r in rows], as_json, lambda: table(rows))


@click.command(
    "upgrade",
    help="Move a run onto another version of its graph; audited. Refused while a node of the "
    "run runs, or when it is at a node the target does not have." + SELECTION_HELP,
)
@click.argument("execution_id", required=False)
@click.option(
    "--version", default=None, help="The target version (default: the newest in this code)."
)
@selection_options
@by_option
@reason_option
@json_option
@click.pass_context
def upgrade(
    ctx: click.Context,
    execution_id: str | None,
    version: str | None,
    status: tuple[str, ...],
    graph: str | None,
    since: str | None,
    tags: dict[str, str],
    dry_run: bool,
    by: str | None,
    reason: str | None,
    as_json: bool,
) -> None:
    selection = Selection(status, graph, since, tags)
    if version is not None and (selection.given or dry_run):
        raise click.UsageError(
            "--version applies to one run: give its EXECUTION_ID (a selection moves each run "
            "onto the newest version in this code)"
        )
    options = {"by": by, "reason": reason, "as_json": as_json}
    selections.if_selected(ctx, "upgrade", execution_id, selection, dry_run, **options)
    durable = ctx.obj.durable
    execution = durable.get(str(execution_id))
    before = execution.version
    after = execution.upgrade(version, by=by, reason=reason)
    moved = {"id": execution.id, "from": before, "to": after, "status": str(execution.status)}
    emit(
        moved,
        as_json,
        lambda: (
            f"moved {execution.id} from version {before or UNPINNED} to {after}; "
            f"status {moved['status']}"
        ),
    )
    name = execution.record.graph
    if not any(d.served.graph == name and d.served.version == after for d in durable.deployments()):
        click.echo(
            f"warning: no live worker serves version {after} of {name}; deploy one before the "
            "run goes on, or it stops again as needs_intervention.",
            err=True,
        )
