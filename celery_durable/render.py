"""Terminal rendering shared by the CLI and the demo: tables, graphs with node status,
progress bars. Plain text, no colour codes, so output can be piped and diffed."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from celery_durable.model.records import AttemptRecord, Checkpoint, ExecutionRecord, Kind
from celery_durable.status import ENDS_WAIT, Status

if TYPE_CHECKING:
    from celery_durable.engine.execution import Execution, Progress
    from celery_durable.graphs.builder import Graph

# An error's message in a row: its first line, cut to this many characters.
ERROR_WIDTH = 120
# The keys of a wait's and a wake's output that hold epoch times (a wait's end, a timer's
# due time): shown as dates, never as the float they are stored as.
TIMES = frozenset({"until", "due"})
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


def executions(
    records: Iterable[ExecutionRecord], tags: Mapping[str, Mapping[str, str]] | None = None
) -> str:
    """The runs as a table; a TAGS column too when any of them has tags (``tags``: by id)."""
    now = datetime.now(UTC)
    tagged = tags or {}
    rows = [
        (
            r.id,
            r.graph,
            r.cursor.graph_version or "-",
            r.status,
            _at(r),
            age(r.updated_at, now) + " ago",
            ",".join(f"{k}={v}" for k, v in sorted(tagged.get(r.id, {}).items())) or "-",
        )
        for r in records
    ]
    headers = ["ID", "GRAPH", "VERSION", "STATUS", "AT", "UPDATED", "TAGS"]
    shown = len(headers) if any(tagged.values()) else len(headers) - 1
    return table(headers[:shown], [row[:shown] for row in rows])


def _at(record: ExecutionRecord) -> str:
    cursor = record.cursor
    if record.status == Status.WAITING:
        return "; ".join(waiting(w.to_json()) for w in cursor.waits.values())
    if cursor.frontier:
        return ",".join(name for name, _ in cursor.frontier)
    undo = cursor.undo
    return f"undo {undo[0][0]}" if undo else "-"


def waiting(wait: dict[str, Any]) -> str:
    """What one wait (``Wait.to_json()``) waits for: ``event paid at collect``, ``sleep until
    2024-05-01 12:00:05 UTC at ship``, ``approval before charge``, ``3 child runs at fan``."""
    kind, node = wait["kind"], wait["node"]
    if kind == "interrupt":
        return f"approval {wait['slot']} {node}"
    until = wait.get("until")
    if kind == "sleep":
        what = f"sleep until {when(until)}" if until is not None else "sleep"
    elif kind == "event":
        what = f"event {wait['event']}"
        what += f" (times out {when(until)})" if until is not None else ""
    elif kind == "child":
        what = f"child run {wait['child']}"
    elif kind == "children":
        what = f"{wait['count']} child runs {wait['child']}*"
    else:
        what = kind
    return f"{what} at {node}"


def when(moment: datetime | float) -> str:
    """A moment as operators read it: date and time, UTC said."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def children(records: Sequence[ExecutionRecord]) -> str:
    """``12 (10 succeeded, 2 running)``, then the first few ids."""
    counts = Counter(str(r.status) for r in records)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    shown = " ".join(r.id for r in records[:5]) + (" ..." if len(records) > 5 else "")
    return f"{len(records)} ({summary}): {shown}"


def history(
    checkpoints: Iterable[Checkpoint],
    attempts: Iterable[AttemptRecord] = (),
    limits: Mapping[tuple[str, str], int] | None = None,
) -> str:
    """Every checkpoint, with each failed attempt (kind ``attempt``) where it happened in
    time; ``limits``: the attempts each (kind, node) may take, to say "attempt 2 of 5"."""
    items: list[Checkpoint | AttemptRecord] = [*checkpoints, *attempts]
    items.sort(key=_moment)
    start = _moment(items[0]) if items else None
    rows: list[tuple[Any, ...]] = []
    for item in items:
        moment = _moment(item)
        after = f"+{(moment - start).total_seconds():.3f}s" if start else "-"
        if isinstance(item, AttemptRecord):
            line = attempt(item, (limits or {}).get((item.kind, item.node)))
            rows.append(("-", moment, after, "attempt", item.node, item.visit, "-", line))
            continue
        meta = item.meta or {}
        what = meta.get("op") or ""
        if meta.get("skipped"):
            what = "skipped"
        if item.corrupted:
            what = "CORRUPTED (checksum mismatch; contents withheld)"
        by = " ".join(x for x in (what, meta.get("by") or "") if x) or "-"
        output = item.output
        if item.kind in (Kind.WAIT, Kind.WAKE) and isinstance(output, dict):
            output = {k: when(v) if k in TIMES and v is not None else v for k, v in output.items()}
        rows.append((item.seq, moment, after, item.kind, item.node or "-", item.visit, by, output))
    return table(["SEQ", "AT (UTC)", "AFTER", "KIND", "NODE", "VISIT", "BY", "OUTPUT"], rows)


def limits(g: Graph | None) -> dict[tuple[str, str], int]:
    """The attempts each node and compensation of ``g`` may take, by (kind, node)."""
    if g is None:
        return {}
    found: dict[tuple[str, str], int] = {}
    for name, node in g.nodes.items():
        found[(Kind.NODE, name)] = node.retry.max_attempts
        found[(Kind.COMPENSATION, name)] = node.compensation_retry.max_attempts
    return found


def _moment(item: Checkpoint | AttemptRecord) -> datetime:
    return item.failed_at if isinstance(item, AttemptRecord) else item.created_at


def attempt(failed: AttemptRecord, limit: int | None = None) -> str:
    """``attempt 3 of 5 failed: ConnectionError: refused`` (a compensation's: ``undo
    attempt ...``), the message's first line, cut short."""
    of = f" of {limit}" if limit else ""
    undo = "undo " if failed.kind == Kind.COMPENSATION else ""
    error = failed.error
    message = (str(error.get("message") or "").splitlines() or [""])[0]
    if len(message) > ERROR_WIDTH:
        message = message[: ERROR_WIDTH - 3] + "..."
    return f"{undo}attempt {failed.attempt}{of} failed: {error.get('type', 'Error')}: {message}"


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


def bar(
    progress: Progress,
    waiting_on: dict[str, Any] | None = None,
    undone: int = 0,
    width: int = 30,
) -> str:
    """``[#####-----] 2/4 nodes (50%) at charge, eta 3.0s [running]``. A run that waits says
    for what (a sleep: until when) instead of an ETA; a compensated run is drawn empty, with
    how many steps were undone: its work was taken back, not completed."""
    status = progress.status
    shown = percent(progress)
    filled = round(width * shown / 100)
    text = f"{progress.done}/{progress.total} nodes ({shown:.0f}%)"
    if status == Status.COMPENSATED:
        steps = "step" if undone == 1 else "steps"
        text = f"{progress.done}/{progress.total} nodes done, then {undone} {steps} undone"
    if progress.current:
        text += f" at {', '.join(progress.current)}"
    if waiting_on is not None:
        text += f", {_waits_for(waiting_on)}"
    elif progress.eta is not None and not status.finished:
        text += f", eta {progress.eta:.1f}s"
    if progress.children:
        text += f", children {progress.children_done}/{progress.children}"
    return f"[{'#' * filled}{'-' * (width - filled)}] {text} [{status}]"


def percent(progress: Progress) -> float:
    """100 only for a run that succeeded; 0 for a compensated one, whose work was undone."""
    if progress.status == Status.SUCCEEDED:
        return 100.0
    if progress.status == Status.COMPENSATED:
        return 0.0
    return min(progress.percent, 99.0)


def undone(execution: Execution, status: Status) -> int:
    """How many steps a compensated run undid (0 for any other run: nothing to read)."""
    if status != Status.COMPENSATED:
        return 0
    return sum(1 for cp in execution.history() if cp.kind == Kind.COMPENSATION)


def _waits_for(wait: dict[str, Any]) -> str:
    """What ``Execution.waiting_on`` says, in a few words: ``sleeping until 12:00:05``."""
    until = wait.get("until")
    if wait["kind"] == "sleep" and until is not None:
        end = datetime.fromisoformat(until)
        today = end.astimezone(UTC).date() == datetime.now(UTC).date()
        return f"sleeping until {end.strftime('%H:%M:%S UTC') if today else when(end)}"
    if wait["kind"] == "event":
        return f"waiting for event {wait['event']}"
    if wait["kind"] == "interrupt":
        return f"waiting for approval {wait['when']} {wait['node']}"
    if wait["kind"] == "children":
        return f"waiting for {wait['children']} child runs"
    return f"waiting for {wait['kind']}"


def follow_progress(execution: Execution, *, out: Any = None) -> None:
    """Redraw a progress bar in place as the run commits (``run.stream()``: no polling),
    until it ends."""
    out = out or sys.stdout
    live = out.isatty()
    shown = ""
    moves = execution.stream(after=execution.record.version)
    while True:
        progress = execution.progress()
        line = bar(progress, execution.waiting_on, undone(execution, progress.status))
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
        next(moves, None)
