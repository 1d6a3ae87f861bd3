"""Terminal rendering shared by the CLI and the demo: tables, graphs with node status,
progress bars. Plain text, no colour codes, so output can be piped and diffed."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from celery_durable.model.records import Checkpoint, ExecutionRecord
from celery_durable.status import ENDS_WAIT, Status

if TYPE_CHECKING:
    from celery_durable.engine.execution import Execution, Progress
    from celery_durable.graphs.builder import Graph

MARKS = {
    "done": "✓",
    "due": "▶",
    "failed": "✗",
    "undone": "↺",
    "waiting": "◷",
    "skipped": "»",
    "pending": "·",
}


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dict | list):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
        return text if len(text) <= 60 else text[:57] + "..."
    return str(value)


def age(when: datetime, now: datetime | None = None) -> str:
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def executions(records: Iterable[ExecutionRecord]) -> str:
    now = datetime.now(UTC)
    return table(
        ["ID", "GRAPH", "VERSION", "STATUS", "AT", "UPDATED"],
        [
            (
                r.id,
                r.graph,
                r.cursor.graph_version or "-",
                r.status,
                _at(r),
                age(r.updated_at, now) + " ago",
            )
            for r in records
        ],
    )


def _at(record: ExecutionRecord) -> str:
    cursor = record.cursor
    if record.status == Status.WAITING:
        return "; ".join(waiting(w.to_json()) for w in cursor.waits.values())
    if cursor.frontier:
        return ",".join(name for name, _ in cursor.frontier)
    undo = cursor.undo
    return f"undo {undo[0][0]}" if undo else "-"


def waiting(wait: dict[str, Any]) -> str:
    """``event paid at collect``, ``sleep until 12:00:05 at ship``, ``approval before charge``."""
    if wait["kind"] == "interrupt":
        return f"approval {wait['slot']} {wait['node']}"
    what = f"event {wait['event']}" if wait["kind"] == "event" else wait["kind"]
    if wait.get("until") is not None:
        until = datetime.fromtimestamp(wait["until"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        what += f" until {until}"
    return f"{what} at {wait['node']}"


def children(records: Sequence[ExecutionRecord]) -> str:
    """``12 (10 succeeded, 2 running)``, then the first few ids."""
    counts = Counter(str(r.status) for r in records)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    shown = " ".join(r.id for r in records[:5]) + (" ..." if len(records) > 5 else "")
    return f"{len(records)} ({summary}): {shown}"


def history(checkpoints: Iterable[Checkpoint]) -> str:
    items = list(checkpoints)
    start = items[0].created_at if items else None
    rows = []
    for cp in items:
        meta = cp.meta or {}
        by = meta.get("by") or ""
        what = meta.get("op") or ""
        if meta.get("skipped"):
            what = "skipped"
        if cp.corrupted:
            what = "CORRUPTED (checksum mismatch; contents withheld)"
        rows.append(
            (
                cp.seq,
                f"+{(cp.created_at - start).total_seconds():.3f}s" if start else "-",
                cp.kind,
                cp.node or "-",
                cp.visit,
                " ".join(x for x in (what, by) if x) or "-",
                cp.output,
            )
        )
    return table(["SEQ", "AT", "KIND", "NODE", "VISIT", "BY", "OUTPUT"], rows)


def node_states(record: ExecutionRecord, checkpoints: Iterable[Checkpoint]) -> dict[str, str]:
    states: dict[str, str] = {}
    for cp in checkpoints:
        if cp.kind == "node":
            states[cp.node] = "skipped" if (cp.meta or {}).get("skipped") else "done"
        elif cp.kind == "failure":
            states[cp.node] = "failed"
        elif cp.kind == "compensation":
            states[cp.node] = "undone"
    for name, _ in record.cursor.frontier:
        if record.status in (Status.FAILED,) and states.get(name) == "failed":
            continue
        states[name] = "due"
    for wait in record.cursor.waits.values():
        states[wait.node] = "waiting"
    return states


def graph(g: Graph, states: dict[str, str]) -> str:
    """Nodes in breadth-first order from the entry, each with its status and successors."""
    order: list[str] = []
    todo = [g.entry_node] if g.entry_node else []
    while todo:
        name = todo.pop(0)
        if name in order or name not in g.nodes:
            continue
        order.append(name)
        todo.extend(g.edges.get(name, ()))
        if name in g.branches:
            paths = g.branches[name][1]
            todo.extend(paths if paths is not None else [])
    order.extend(n for n in g.nodes if n not in order)
    width = max(len(n) for n in order)
    lines = []
    for name in order:
        state = states.get(name, "pending")
        targets = list(g.edges.get(name, ()))
        arrow = ""
        if targets:
            arrow = " ─▶ " + ", ".join(f"{t} (join)" if t in g.joins else t for t in targets)
        if name in g.branches:
            paths = g.branches[name][1]
            arrow += " ─?▶ " + ("|".join(paths) if paths else "any")
        lines.append(f"  {MARKS[state]} {name.ljust(width)}  {state:<8}{arrow}")
    legend = "  ".join(f"{mark} {state}" for state, mark in MARKS.items())
    return "\n".join([*lines, f"  ({legend})"])


def bar(progress: Progress, width: int = 30) -> str:
    filled = round(width * progress.percent / 100)
    return f"[{'#' * filled}{'-' * (width - filled)}] {progress}"


def follow_progress(execution: Execution, *, out: Any = None, interval: float = 0.1) -> None:
    """Redraw a progress bar in place until the run ends."""
    out = out or sys.stdout
    live = out.isatty()
    shown = ""
    while True:
        progress = execution.progress()
        line = bar(progress)
        if live:
            out.write("\r" + line.ljust(100))
        elif line != shown:
            out.write(line + "\n")
        shown = line
        out.flush()
        if progress.status in ENDS_WAIT:
            if live:
                out.write("\n")
            return
        time.sleep(interval)
