"""Looking at runs: ls, show, history, progress."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime

import click

from celery_durable import render
from celery_durable.cli import explain, words
from celery_durable.cli.common import (
    Obj,
    checkpoint_json,
    emit,
    graph_of,
    json_option,
    parse_age,
    record_json,
    status_option,
    tag_option,
)
from celery_durable.model.tags import spelled


@click.command("ls")
@status_option
@click.option("--graph", default=None, help="Filter by graph name.")
@click.option("--since", default=None, help="Started within this age: 15m, 2h, 7d.")
@click.option("--stuck", is_flag=True, help="Only runs with no progress past stuck_after.")
@click.option("--parent", default=None, help="Only the child runs of this execution.")
@tag_option
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
    tags: dict[str, str],
    limit: int,
    as_json: bool,
) -> None:
    """List executions, newest first."""
    durable = obj.durable
    if stuck:
        runs = durable.stuck()
        runs = [r for r in runs if tags.items() <= r.tags.items()][:limit] if tags else runs[:limit]
    else:
        after = datetime.now(UTC) - parse_age(since) if since else None
        runs = durable.list(
            status=list(status) or None,
            graph=graph,
            since=after,
            parent=parent,
            limit=limit,
            tags=tags,
        )
    records = [run.record for run in runs]
    tagged = {run.id: run.tags for run in runs}
    emit([record_json(r) for r in runs], as_json, lambda: render.executions(records, tagged))


@click.command("show")
@click.argument("execution_id")
@json_option
@click.pass_obj
def show(obj: Obj, execution_id: str, as_json: bool) -> None:
    """One execution: version, status, state, error, what it waits for, the last failed
    attempt of each node it is at, its graph with each node's status, and the operations its
    status allows."""
    durable = obj.durable
    execution = durable.get(execution_id)
    record = execution.record
    pinned = record.cursor.graph_version
    graph = graph_of(durable, record)
    checkpoints = execution.history()
    states = render.node_states(record, checkpoints)
    children = [child.record for child in execution.children()]
    held = execution.held_back
    limits = render.limits(graph)
    failures = explain.last_failures(record, checkpoints, execution.attempts())

    def human() -> str:
        version = pinned or "unpinned (runs on the newest)"
        lines = [
            f"{record.id}  graph={record.graph}  version={version}  status={record.status}  "
            f"checkpoint={record.version}",
            f"state: {json.dumps(record.state, sort_keys=True)}",
            *([f"tags: {' '.join(spelled(execution.tags))}"] if execution.tags else []),
        ]
        if record.error:
            message = words.for_cli(str(record.error.get("message")), record.id)
            lines.append(f"error: {record.error.get('type')}: {message}")
        lines += explain.failure_lines(record, failures, limits)
        lines += explain.waits(record)
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
        lines += explain.next_steps(record, graph)
        return "\n".join(lines)

    listed = [{"id": c.id, "graph": c.graph, "status": str(c.status)} for c in children]
    waiting = [] if record.status.finished else record.cursor.waits.values()
    data = {
        **record_json(execution),
        "nodes": states,
        "children": listed,
        "held": held,
        "waiting_on": [wait.public() for wait in waiting],
        "last_failures": [explain.attempt_json(a, limits) for a in failures],
        "operations": explain.operations(record, graph),
    }
    emit(data, as_json, human)


@click.command("history")
@click.argument("execution_id")
@json_option
@click.pass_obj
def history(obj: Obj, execution_id: str, as_json: bool) -> None:
    """Every checkpoint of an execution and every failed attempt, oldest first."""
    durable = obj.durable
    execution = durable.get(execution_id)
    checkpoints = execution.history()
    attempts = execution.attempts()
    limits = render.limits(graph_of(durable, execution.record))
    rows = [checkpoint_json(c) for c in checkpoints]
    rows += [explain.attempt_json(a, limits) for a in attempts]
    rows.sort(key=lambda row: row["created_at"])
    emit(rows, as_json, lambda: render.history(checkpoints, attempts, limits))


@click.command("progress")
@click.argument("execution_id")
@click.option("--follow/--no-follow", default=True, help="Redraw until the run ends.")
@json_option
@click.pass_obj
def progress(obj: Obj, execution_id: str, follow: bool, as_json: bool) -> None:
    """A live progress bar: done/total nodes, current node, percent, and an ETA or what the
    run waits for."""
    execution = obj.durable.get(execution_id)
    if as_json or not follow:
        p = execution.progress()
        waiting = execution.waiting_on
        undone = render.undone(execution, p.status)
        data = {
            **asdict(p),
            "status": str(p.status),
            "percent": render.percent(p),
            "eta": None if waiting else p.eta,
            "waiting_on": waiting,
            "undone": undone,
        }
        emit(data, as_json, lambda: render.bar(p, waiting, undone))
        return
    render.follow_progress(execution)
