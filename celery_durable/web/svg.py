"""A run's graph as SVG, drawn on the server: nodes in layers by their distance from the
entry, each coloured by its status, edges as arrows (dashed for a branch, doubled into a
join). No script and no library in the browser."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from html import escape

from celery_durable.web.views import Edge

BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 150, 44, 40, 36, 16


def layers(nodes: list[str], edges: Sequence[Edge], entry: str | None) -> list[list[str]]:
    """Nodes by longest distance from the entry (a join sits below all its branches)."""
    depth: dict[str, int] = {entry: 0} if entry in nodes else {}
    for _ in range(len(nodes)):
        changed = False
        for edge in edges:
            a, b = edge.source, edge.target
            if a in depth and depth.get(b, -1) < depth[a] + 1 and b != entry:
                depth[b] = depth[a] + 1
                changed = True
        if not changed:
            break
    rows: dict[int, list[str]] = defaultdict(list)
    for name in nodes:
        rows[depth.get(name, max(depth.values(), default=0) + 1)].append(name)
    return [rows[d] for d in sorted(rows)]


def graph_svg(nodes: dict[str, str], edges: Sequence[Edge], entry: str | None) -> str:
    """``nodes``: name -> status, in the order they are drawn in their layer."""
    rows = layers(list(nodes), edges, entry)
    widest = max((len(r) for r in rows), default=1)
    width = PAD * 2 + widest * BOX_W + (widest - 1) * GAP_X
    height = PAD * 2 + len(rows) * BOX_H + (len(rows) - 1) * GAP_Y
    at: dict[str, tuple[float, float]] = {}
    for y, row in enumerate(rows):
        offset = (width - (len(row) * BOX_W + (len(row) - 1) * GAP_X)) / 2
        for x, name in enumerate(row):
            at[name] = (offset + x * (BOX_W + GAP_X), PAD + y * (BOX_H + GAP_Y))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>',
    ]
    parts += [_edge(edge, at) for edge in edges if edge.source in at and edge.target in at]
    parts += [_node(name, status, *at[name]) for name, status in nodes.items()]
    parts.append("</svg>")
    return "\n".join(parts)


def _edge(edge: Edge, at: dict[str, tuple[float, float]]) -> str:
    (x1, y1), (x2, y2) = at[edge.source], at[edge.target]
    kind = escape(edge.kind)
    return (
        f'<line class="edge {kind}" x1="{x1 + BOX_W / 2}" y1="{y1 + BOX_H}" '
        f'x2="{x2 + BOX_W / 2}" y2="{y2}" marker-end="url(#arrow)"/>'
    )


def _node(name: str, status: str, x: float, y: float) -> str:
    label = escape(name if len(name) <= 18 else name[:17] + "…")
    state = escape(status)
    return (
        f'<g class="node {state}" data-node="{escape(name)}" data-status="{state}">'
        f"<title>{escape(name)}: {state}</title>"
        f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6"/>'
        f'<text x="{x + BOX_W / 2}" y="{y + 18}" text-anchor="middle">{label}</text>'
        f'<text class="status" x="{x + BOX_W / 2}" y="{y + 34}" '
        f'text-anchor="middle">{state}</text></g>'
    )
