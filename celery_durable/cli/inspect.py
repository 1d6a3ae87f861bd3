"""Looking at runs: ls, show, history, progress."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime

import click

from celery_durable import render
from celery_durable.cli.common import Obj, emit, json_option, parse_age, record_json


@click.command("ls")
@click.option("--status", multiple=True, help="Filter by status (repeatable).")
@click.option("--graph", default=None, help="Filter by graph name.")
@click.option("--since", default=None, help="Started within this age: 15m, 2h, 7d.")
@click.option("--stuck", is_flag=True, help="Only runs with no progress past stuck_after.")
@click.option("--parent", default=None, help="Only the child runs of this execution.")
@click.option("--limit", default=50, show_default=True)
@json_option
@click.pass_obj
def ls(
    obj: Obj,
    status: tuple[str, ...],
    graph: str | None,
    since: str | None,
    stuck: bool,
    parent: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List executions, newest first."""
    durable = obj.durable
    if stuck:
        runs = durable.stuck()[:limit]
    else:
        after = datetime.now(UTC) - parse_age(since) if since else None
        runs = durable.list(
            status=list(status) or None, graph=graph, since=after, parent=parent, limit=limit
        )
    records = [run.record for run in runs]
    emit([record_json(r) for r in runs], as_json, lambda: render.executions(records))


@click.command("show")
@click.argument("execution_id")
@json_option
@click.pass_obj
def show(obj: Obj, execution_id: str, as_json: bool) -> None:
    """One execution: version, status, state, error, and its graph with each node's status."""
    durable = obj.durable
    execution = durable.get(execution_id)
    record = execution.record
    pinned = record.cursor.graph_version
    graph = durable.graph_at(record.graph, pinned) or durable.graphs.get(record.graph)
    checkpoints = execution.history()
    states = render.node_states(record, checkpoints)
    children = [child.record for child in execution.children()]
    held = execution.held_back

    def human() -> str:
        version = pinned or "unpinned (runs on the newest)"
        lines = [
            f"{record.id}  graph={record.graph}  version={version}  status={record.status}  "
            f"checkpoint={record.version}",
            f"state: {json.dumps(record.state, sort_keys=True)}",
        ]
        if record.error:
            lines.append(f"error: {record.error.get('type')}: {record.error.get('message')}")
        if children:
            lines.append(f"children: {render.children(children)}")
        for visit, by in sorted(held.items()):
            lines.append(f"held: {visit} waits for {by}")
        if graph is not None:
            if pinned is not None and graph.version != pinned:
                lines.append(
                    f"  (version {pinned} is not defined in this process: drawn as version "
                    f"{graph.version})"
                )
            lines.append(render.graph(graph, states))
        else:
            lines.append(
                "  (graph not loaded in this process; node states: "
                f"{json.dumps(states, sort_keys=True)})"
            )
        return "\n".join(lines)

    listed = [{"id": c.id, "graph": c.graph, "status": str(c.status)} for c in children]
    data = {**record_json(execution), "nodes": states, "children": listed, "held": held}
    emit(data, as_json, human)


@click.command("history")
@click.argument("execution_id")
@json_option
@click.pass_obj
def history(obj: Obj, execution_id: str, as_json: bool) -> None:
    """Every checkpoint of an execution, oldest first."""
    checkpoints = obj.durable.get(execution_id).history()
    emit([asdict(c) for c in checkpoints], as_json, lambda: render.history(checkpoints))


@click.command("progress")
@click.argument("execution_id")
@click.option("--follow/--no-follow", default=True, help="Redraw until the run ends.")
@json_option
@click.pass_obj
def progress(obj: Obj, execution_id: str, follow: bool, as_json: bool) -> None:
    """A live progress bar: done/total nodes, current node, percent, ETA."""
    execution = obj.durable.get(execution_id)
    if as_json or not follow:
        p = execution.progress()
        emit({**asdict(p), "status": str(p.status)}, as_json, lambda: render.bar(p))
        return
    render.follow_progress(execution)
