"""What the pages and the JSON API show, as typed values built from the public objects: a page
of runs, one run in full, the state at a checkpoint. No web framework here: ``app.py`` renders
these as HTML (templates read their fields) or JSON (their ``as_json``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery_durable import Checkpoint, Durable, Execution, Graph
from celery_durable.render import node_states
from celery_durable.status import ACTIVE

PAGE = 50
# render.node_states says "due" for a visit in flight; the page says what the operator sees.
SHOWN = {"due": "running"}


@dataclass(frozen=True)
class Filters:
    status: str | None = None
    graph: str | None = None
    since: datetime | None = None
    prefix: str | None = None
    parent: str | None = None
    # The key of the last run of the page before: (created_at, id); see Durable.list.
    before: tuple[datetime, str] | None = None

    @classmethod
    def parse(cls, args: dict[str, str]) -> Filters:
        """From query arguments; a value that does not parse is a ValueError for a 400."""
        since = datetime.fromisoformat(args["since"]) if args.get("since") else None
        before = None
        if args.get("before"):
            at, _, last = args["before"].partition("|")
            before = (datetime.fromisoformat(at), last)
        return cls(
            status=args.get("status") or None,
            graph=args.get("graph") or None,
            since=since,
            prefix=args.get("prefix") or None,
            parent=args.get("parent") or None,
            before=before,
        )


@dataclass(frozen=True)
class RunRow:
    """One run as a line of the list; ``stuck``: active with no commit for stuck_after.
    ``version`` is the seq of the run's last checkpoint; ``graph_version`` is the version of
    its graph it is pinned to (None: started before runs were pinned, it runs on the newest)."""

    id: str
    graph: str
    graph_version: str | None
    status: str
    version: int
    created_at: str
    updated_at: str
    parent: str | None
    stuck: bool

    @classmethod
    def of(cls, execution: Execution, stuck_before: datetime) -> RunRow:
        record = execution.record
        return cls(
            id=record.id,
            graph=record.graph,
            graph_version=record.cursor.graph_version,
            status=str(record.status),
            version=record.version,
            created_at=record.created_at.isoformat(),
            updated_at=record.updated_at.isoformat(),
            parent=record.parent_id,
            stuck=record.status in ACTIVE and record.updated_at < stuck_before,
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
class RunDetail(RunRow):
    """Everything the run page shows: node statuses, graph, waits, error, children, timeline.
    ``drawn_version``: the version whose nodes and edges these are (the run's own when this
    process defines it, else the newest; None when it defines no version of the graph)."""

    finished: bool
    drawn_version: str | None
    state: dict[str, Any]
    error: Mapping[str, Any] | None
    nodes: dict[str, str]
    edges: tuple[Edge, ...]
    waiting_on: dict[str, Any] | None
    held_back: dict[str, str]
    children: tuple[ChildRow, ...]
    timeline: tuple[CheckpointView, ...]

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "edges": [edge.as_json() for edge in self.edges]}


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
    states = {n: SHOWN.get(s, s) for n, s in node_states(record, history).items()}
    graph = drawn(durable, record.graph, record.cursor.graph_version)
    if graph is not None:
        states = {name: states.get(name, "pending") for name in graph.nodes} | states
    children = (ChildRow(c.id, c.record.graph, str(c.record.status)) for c in execution.children())
    return RunDetail(
        **asdict(RunRow.of(execution, _stuck_before(durable))),
        finished=record.status.finished,
        drawn_version=graph.version if graph is not None else None,
        state=record.state,
        error=record.error,
        nodes=states,
        edges=edges(graph) if graph is not None else (),
        waiting_on=execution.waiting_on,
        held_back=execution.held_back,
        children=tuple(children),
        timeline=tuple(_checkpoint(durable, cp, flower) for cp in history),
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
