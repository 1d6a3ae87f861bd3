"""What the pages and the JSON API show, as typed values built from the public objects: a page
of runs, one run in full, the state at a checkpoint. No web framework here: ``app.py`` renders
these as HTML (templates read their fields) or JSON (their ``as_json``)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from celery_durable import Checkpoint, Durable, Execution, Graph
from celery_durable.render import node_states
from celery_durable.status import ACTIVE, LIVE, Status
from celery_durable.web.actions import offered
from celery_durable.web.filters import Filters
from celery_durable.web.labels import few, waits_for

__all__ = ["Filters", "RunDetail", "RunRow", "RunsPage", "run_detail", "runs_page", "state_at"]

PAGE = 50
# render.node_states says "due" for a visit made ready. In a run that goes on it is running
# (or about to); in one that stopped (failed, cancelled, needs intervention) nothing runs it:
# it is pending, until a retry or a restart.
GOING = LIVE | {Status.WAITING}


@dataclass(frozen=True)
class RunRow:
    """One run as a line of the list; ``stuck``: active with no commit for stuck_after.
    ``version`` is the seq of the run's last checkpoint; ``graph_version`` is the version of
    its graph it is pinned to (None: started before runs were pinned, it runs on the newest).
    ``at``: the node(s) it is at, or what it waits for; ``error``: its error's type, message
    and node (the run page adds the traceback); ``duration``: seconds from its start to its
    end (to now while it goes on); ``tags``: what it was started with, to find it by."""

    id: str
    graph: str
    graph_version: str | None
    status: str
    version: int
    created_at: str
    updated_at: str
    finished_at: str | None
    parent: str | None
    tags: dict[str, str]
    stuck: bool
    at: str | None
    error: Mapping[str, Any] | None
    duration: float

    @classmethod
    def of(cls, execution: Execution, stuck_before: datetime) -> RunRow:
        record = execution.record
        end = record.finished_at if record.status.finished else None
        return cls(
            id=record.id,
            graph=record.graph,
            graph_version=record.cursor.graph_version,
            status=str(record.status),
            version=record.version,
            created_at=record.created_at.isoformat(),
            updated_at=record.updated_at.isoformat(),
            finished_at=end.isoformat() if end else None,
            parent=record.parent_id,
            tags=execution.tags,
            stuck=record.status in ACTIVE and record.updated_at < stuck_before,
            at=_at(execution),
            error=_brief(record.error),
            duration=((end or datetime.now(UTC)) - record.created_at).total_seconds(),
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunsPage:
    """Runs newest first; ``next``: the ``before`` filter of the page after, None at the end."""

    runs: tuple[RunRow, ...]
    next: str | None
    counts: dict[str, int]
    graphs: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Edge:
    """An arrow of the graph; ``kind``: "edge", "join" (into a join node) or "branch"."""

    source: str
    target: str
    kind: str

    def as_json(self) -> dict[str, str]:
        return {"from": self.source, "to": self.target, "kind": self.kind}


@dataclass(frozen=True)
class ChildRow:
    id: str
    graph: str
    status: str


@dataclass(frozen=True)
class CheckpointView:
    """A line of the timeline; ``flower``: the page of the task attempt that committed it."""

    row: ClassVar[str] = "checkpoint"
    seq: int
    kind: str
    node: str
    visit: int
    by: str | None
    why: str | None
    op: str | None
    at: str
    flower: str | None
    corrupted: bool


@dataclass(frozen=True)
class AttemptView:
    """A failed attempt of a node (or compensation) visit, with its error. ``of``: the
    attempts its retry policy allows, where this process defines the node."""

    row: ClassVar[str] = "attempt"
    kind: str
    node: str
    visit: int
    attempt: int
    of: int | None
    type: str
    message: str
    at: str

    @property
    def words(self) -> str:
        """``attempt 2 of 3 failed: ConnectionError: refused``."""
        of = f" of {self.of}" if self.of is not None and self.attempt <= self.of else ""
        what = "compensation attempt" if self.kind == "compensation" else "attempt"
        return f"{what} {self.attempt}{of} failed: {self.type}: {self.message}"


@dataclass(frozen=True)
class RunDetail(RunRow):
    """Everything the run page shows: node statuses, graph, waits, error, children, timeline
    (its checkpoints, and apart from them every failed attempt), the operations its status
    allows. ``drawn_version``: the version whose nodes and edges these are (the run's own when
    this process defines it, else the newest; None when it defines no version of the graph)."""

    finished: bool
    drawn_version: str | None
    state: dict[str, Any]
    nodes: dict[str, str]
    edges: tuple[Edge, ...]
    waiting_on: dict[str, Any] | None
    waits_for: str | None
    held_back: dict[str, str]
    children: tuple[ChildRow, ...]
    timeline: tuple[CheckpointView, ...]
    attempts: tuple[AttemptView, ...]
    offered: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "edges": [edge.as_json() for edge in self.edges],
            "stamp": self.stamp,
        }

    @property
    def stamp(self) -> str:
        """Changes whenever what the page shows of the run does: its page's script polls the
        JSON for it and redraws only when it moved."""
        children = ",".join(f"{c.id}={c.status}" for c in self.children)
        held = ",".join(f"{k}={v}" for k, v in sorted(self.held_back.items()))
        return f"{self.version}:{self.status}:{len(self.attempts)}:{held}:{children}"

    def entries(self) -> list[CheckpointView | AttemptView]:
        """Checkpoints and failed attempts in the order they happened (an attempt fails
        before the checkpoint that follows it)."""
        rows: list[CheckpointView | AttemptView] = [*self.timeline, *self.attempts]
        return sorted(rows, key=lambda r: (datetime.fromisoformat(r.at), r.row == "checkpoint"))

    def tries(self) -> dict[str, int]:
        """Failed attempts per node, for the drawing."""
        counts: dict[str, int] = defaultdict(int)
        for attempt in self.attempts:
            if attempt.kind == "node":
                counts[attempt.node] += 1
        return dict(counts)


@dataclass(frozen=True)
class Change:
    """A field's change between two states; values as JSON text, None where there is none."""

    field: str
    change: str
    old: str | None = None
    new: str | None = None

    def as_json(self) -> dict[str, str]:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class StateAt:
    """The state a checkpoint left, and what changed since the checkpoint before it."""

    seq: int
    state: dict[str, Any]
    diff: tuple[Change, ...]

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "state": self.state, "diff": [c.as_json() for c in self.diff]}


def runs_page(durable: Durable, filters: Filters, limit: int = PAGE) -> RunsPage:
    """One page, newest first, with the key of the next page and the counts per status."""
    runs = durable.list(
        status=filters.status,
        graph=filters.graph,
        since=filters.since,
        limit=limit + 1,
        parent=filters.parent,
        id_prefix=filters.prefix,
        before=filters.before,
        tags=dict(filters.tags) or None,
    )
    stuck_before = _stuck_before(durable)
    last = runs[limit - 1].record if len(runs) > limit else None
    return RunsPage(
        runs=tuple(RunRow.of(run, stuck_before) for run in runs[:limit]),
        next=f"{last.created_at.isoformat()}|{last.id}" if last else None,
        counts=durable.status_counts(),
        graphs=tuple(sorted(durable.graphs)),
    )


def run_detail(durable: Durable, execution: Execution, flower: str) -> RunDetail:
    """The run as committed now, with each node task's page in Flower."""
    record = execution.refresh()
    history = execution.history()
    due = "running" if record.status in GOING else "pending"
    states = {n: due if s == "due" else s for n, s in node_states(record, history).items()}
    graph = drawn(durable, record.graph, record.cursor.graph_version)
    arrows = edges(graph) if graph is not None else ()
    if graph is not None:
        states = {name: states.get(name, "pending") for name in graph.nodes} | states
        for name in not_taken(states, arrows, record.cursor.visits):
            states[name] = "skipped"
    waiting_on = execution.waiting_on
    children = (ChildRow(c.id, c.record.graph, str(c.record.status)) for c in execution.children())
    return RunDetail(
        **{**asdict(RunRow.of(execution, _stuck_before(durable))), "error": record.error},
        finished=record.status.finished,
        drawn_version=graph.version if graph is not None else None,
        state=record.state,
        nodes=states,
        edges=arrows,
        waiting_on=waiting_on,
        waits_for=waits_for(waiting_on),
        held_back=execution.held_back,
        children=tuple(children),
        timeline=tuple(_checkpoint(durable, cp, flower) for cp in history),
        attempts=tuple(_attempts(execution, graph)),
        offered=offered(
            record.status,
            approval=bool(waiting_on and waiting_on["kind"] == "interrupt"),
            compensable=graph is None or any(n.compensator for n in graph.nodes.values()),
            other_versions=_other_versions(durable, record.graph, record.cursor.graph_version),
        ),
    )


def drawn(durable: Durable, graph: str, version: str | None) -> Graph | None:
    """The structure to draw a run on: its own version, else (not defined in this process)
    the newest, the page saying which it drew."""
    return durable.graph_at(graph, version) or durable.graphs.get(graph)


def edges(graph: Graph) -> tuple[Edge, ...]:
    """The graph's arrows: edges (into a join marked so), then branches' possible paths."""
    arrows = [
        Edge(a, b, "join" if b in graph.joins else "edge")
        for a, targets in graph.edges.items()
        for b in targets
    ]
    for a, (_, paths) in graph.branches.items():
        arrows += [Edge(a, b, "branch") for b in paths or ()]
    return tuple(arrows)


def not_taken(
    states: Mapping[str, str], arrows: Iterable[Edge], visited: Mapping[str, int]
) -> set[str]:
    """The nodes the run went past without running: never made ready, though everything that
    leads to them is done or itself not taken (a branch's path it did not choose, and what
    only that path leads to). ``durable show`` says "skipped" for them too."""
    before: dict[str, set[str]] = defaultdict(set)
    for arrow in arrows:
        before[arrow.target].add(arrow.source)
    skipped: set[str] = set()
    grew = True
    while grew:
        grew = False
        for name, sources in before.items():
            if name in skipped or name in visited or states.get(name) != "pending":
                continue
            if all(states.get(s) == "done" or s in skipped for s in sources):
                skipped.add(name)
                grew = True
    return skipped


def _other_versions(durable: Durable, graph: str, version: str | None) -> bool:
    return any(g.version != version for g in durable.versions.get(graph, ()))


def _at(execution: Execution) -> str | None:
    """Where the run is: what it waits for, the nodes due, or the step it undoes."""
    record = execution.record
    if record.status.finished:
        return None
    cursor = record.cursor
    if record.status == Status.WAITING and cursor.waits:
        return "; ".join(filter(None, (waits_for(w.public()) for w in cursor.waits.values())))
    if cursor.frontier:
        return few(list(dict.fromkeys(name for name, _ in cursor.frontier)))
    return f"undo {cursor.undo[0][0]}" if cursor.undo else None


def _brief(error: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The error without its traceback: what a line of the list shows."""
    if not error:
        return None
    return {key: error.get(key) for key in ("type", "message", "node")}


def _attempts(execution: Execution, graph: Graph | None) -> Iterable[AttemptView]:
    for failed in execution.attempts():
        node = graph.nodes.get(failed.node) if graph is not None else None
        policy = None
        if node is not None:
            policy = node.compensation_retry if failed.kind == "compensation" else node.retry
        yield AttemptView(
            kind=str(failed.kind),
            node=failed.node,
            visit=failed.visit,
            attempt=failed.attempt,
            of=policy.max_attempts if policy is not None else None,
            type=str(failed.error.get("type", "Error")),
            message=str(failed.error.get("message", "")),
            at=failed.failed_at.isoformat(),
        )


def _stuck_before(durable: Durable) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=durable.settings.stuck_after)


def _checkpoint(durable: Durable, cp: Checkpoint, flower: str) -> CheckpointView:
    meta = cp.meta or {}
    tid = durable.task_id(cp)
    return CheckpointView(
        seq=cp.seq,
        kind=str(cp.kind),
        node=cp.node,
        visit=cp.visit,
        by=meta.get("by"),
        why=meta.get("reason"),
        op=meta.get("op"),
        at=cp.created_at.isoformat(),
        flower=f"{flower.rstrip('/')}/task/{tid}" if tid else None,
        corrupted=cp.corrupted,
    )


def state_at(execution: Execution, seq: int) -> StateAt:
    """The state checkpoint ``seq`` recorded (KeyError when the run has none such)."""
    history = execution.history()
    chosen = next((cp for cp in history if cp.seq == seq), None)
    if chosen is None:
        raise KeyError(seq)
    earlier = (cp.state for cp in reversed(history) if cp.seq < seq and not cp.corrupted)
    old = next((state for state in earlier if state is not None), {})
    # A step, a wait or a wake records no state: the one before it is still in effect.
    new = old if chosen.state is None else chosen.state
    return StateAt(seq, new, diff(old, new))


def diff(old: dict[str, Any], new: dict[str, Any]) -> tuple[Change, ...]:
    """Field by field, in name order: added, removed, changed."""
    changes = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            changes.append(Change(key, "added", new=_json(new[key])))
        elif key not in new:
            changes.append(Change(key, "removed", old=_json(old[key])))
        elif old[key] != new[key]:
            changes.append(Change(key, "changed", _json(old[key]), _json(new[key])))
    return tuple(changes)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
