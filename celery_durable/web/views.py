"""What the pages and the JSON API show, as plain data: a page of runs, one run in full. No
web framework here: ``app.py`` renders these as HTML or JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery_durable.durable import Durable
from celery_durable.engine.execution import Execution
from celery_durable.model.records import Checkpoint, ExecutionRecord, utcnow
from celery_durable.render import node_states
from celery_durable.status import ACTIVE
from celery_durable.tasks.message import task_id

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


def run_row(record: ExecutionRecord, stuck_before: datetime) -> dict[str, Any]:
    return {
        "id": record.id,
        "graph": record.graph,
        "status": str(record.status),
        "version": record.version,
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
        "parent": record.parent_id,
        "stuck": record.status in ACTIVE and record.updated_at < stuck_before,
    }


def runs_page(durable: Durable, filters: Filters, limit: int = PAGE) -> dict[str, Any]:
    """One page, newest first, with the key of the next page and the counts per status."""
    records = durable.store.list_executions(
        status=filters.status,
        graph=filters.graph,
        since=filters.since,
        parent=filters.parent,
        id_prefix=filters.prefix,
        before=filters.before,
        limit=limit + 1,
    )
    stuck_before = utcnow() - timedelta(seconds=durable.settings.stuck_after)
    rows = [run_row(r, stuck_before) for r in records[:limit]]
    last = records[limit - 1] if len(records) > limit else None
    return {
        "runs": rows,
        "next": f"{last.created_at.isoformat()}|{last.id}" if last else None,
        "counts": durable.store.count_by_status(),
        "graphs": sorted(durable.graphs),
    }


def run_detail(durable: Durable, execution: Execution, flower: str) -> dict[str, Any]:
    """Everything the run page shows: graph and node statuses, waits, timeline, error,
    children, parent, and each node task's page in Flower."""
    record = execution.refresh()
    history = execution.history()
    states = {n: SHOWN.get(s, s) for n, s in node_states(record, history).items()}
    graph = durable.graphs.get(record.graph)
    if graph is not None:
        states = {name: states.get(name, "pending") for name in graph.nodes} | states
    return {
        **run_row(record, utcnow() - timedelta(seconds=durable.settings.stuck_after)),
        "finished": record.status.finished,
        "state": record.state,
        "error": record.error,
        "nodes": states,
        "edges": _edges(graph) if graph is not None else [],
        "waiting_on": execution.waiting_on,
        "held_back": execution.held_back,
        "children": [
            {"id": c.record.id, "graph": c.record.graph, "status": str(c.record.status)}
            for c in execution.children()
        ],
        "timeline": [_checkpoint(cp, flower) for cp in history],
    }


def _edges(graph: Any) -> list[dict[str, str]]:
    edges = [
        {"from": a, "to": b, "kind": "join" if b in graph.joins else "edge"}
        for a, targets in graph.edges.items()
        for b in targets
    ]
    for a, (_, paths) in graph.branches.items():
        edges += [{"from": a, "to": b, "kind": "branch"} for b in paths or ()]
    return edges


def _checkpoint(cp: Checkpoint, flower: str) -> dict[str, Any]:
    meta = cp.meta or {}
    link = None
    if cp.kind in ("node", "compensation") and "attempt" in meta:
        tid = task_id(cp.execution_id, cp.node, cp.visit, meta["attempt"], cp.kind != "node")
        link = f"{flower.rstrip('/')}/task/{tid}"
    return {
        "seq": cp.seq,
        "kind": str(cp.kind),
        "node": cp.node,
        "visit": cp.visit,
        "by": meta.get("by"),
        "why": meta.get("reason"),
        "op": meta.get("op"),
        "at": cp.created_at.isoformat(),
        "flower": link,
        "corrupted": cp.corrupted,
    }


def state_at(execution: Execution, seq: int) -> dict[str, Any]:
    """The state a checkpoint recorded and what changed since the checkpoint before it."""
    history = execution.history()
    chosen = next((cp for cp in history if cp.seq == seq), None)
    if chosen is None:
        raise KeyError(seq)
    earlier = (cp.state for cp in reversed(history) if cp.seq < seq and not cp.corrupted)
    old = next((state for state in earlier if state is not None), {})
    # A step, a wait or a wake records no state: the one before it is still in effect.
    new = old if chosen.state is None else chosen.state
    return {"seq": seq, "state": new, "diff": diff(old, new)}


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Field by field: added, removed, changed (values as JSON text)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            changes.append({"field": key, "change": "added", "new": _json(new[key])})
        elif key not in new:
            changes.append({"field": key, "change": "removed", "old": _json(old[key])})
        elif old[key] != new[key]:
            changes.append(
                {"field": key, "change": "changed", "old": _json(old[key]), "new": _json(new[key])}
            )
    return changes


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
