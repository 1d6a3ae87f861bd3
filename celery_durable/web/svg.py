"""A run's graph as SVG, drawn on the server: nodes in layers by their distance from the
entry, each coloured by its status, edges as arrows (dashed for a branch, doubled into a
join). No library in the browser.

A layer wider than ``COLS`` nodes (a fan-out) is drawn as one group that wraps into rows of
``COLS``, its header counting its nodes by status, and the arrows to and from its nodes meet
the group's border: a 50-way fan-out is as wide as a 6-way one, and every node in it, a failed
one included, is drawn whole. The legend is drawn with the same classes as the nodes, so its
colours are the drawing's."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape

from celery_durable.web.views import Edge

BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 150, 44, 30, 40, 16
# The most nodes side by side: wider layers wrap (6 boxes fit a 1280-pixel window).
COLS = 6
# Inside a group: its header, the gap between its rows, its margin.
HEADER, ROW_GAP, MARGIN = 22, 12, 10
# Every status a node is drawn with, in the legend's order.
LEGEND = ("done", "running", "waiting", "failed", "undone", "skipped", "pending")


@dataclass
class Layout:
    """Where each box is (its top-left corner), and the groups wrapped layers became; an
    arrow to or from a grouped node is drawn to or from its group (``member``)."""

    at: dict[str, tuple[float, float]] = field(default_factory=dict)
    groups: list[tuple[list[str], tuple[float, float, float, float]]] = field(default_factory=list)
    member: dict[str, int] = field(default_factory=dict)
    width: float = 0
    height: float = 0


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


def layout(rows: list[list[str]], cols: int = COLS) -> Layout:
    """Layers top to bottom, each centred; a layer of more than ``cols`` nodes wraps."""
    wide = any(len(row) > cols for row in rows)
    inner = min(max((len(r) for r in rows), default=1), cols)
    content = inner * BOX_W + (inner - 1) * GAP_X + (2 * MARGIN if wide else 0)
    placed = Layout(width=content + 2 * PAD)
    y: float = PAD
    for row in rows:
        if len(row) <= cols:
            left = PAD + (content - (len(row) * BOX_W + (len(row) - 1) * GAP_X)) / 2
            for x, name in enumerate(row):
                placed.at[name] = (left + x * (BOX_W + GAP_X), y)
            y += BOX_H + GAP_Y
            continue
        lines = -(-len(row) // cols)
        height = HEADER + lines * BOX_H + (lines - 1) * ROW_GAP + MARGIN
        for i, name in enumerate(row):
            line, x = divmod(i, cols)
            top = y + HEADER + line * (BOX_H + ROW_GAP)
            placed.at[name] = (PAD + MARGIN + x * (BOX_W + GAP_X), top)
            placed.member[name] = len(placed.groups)
        placed.groups.append((row, (PAD, y, content, height)))
        y += height + GAP_Y
    placed.height = y - GAP_Y + PAD
    return placed


def graph_svg(
    nodes: Mapping[str, str],
    edges: Sequence[Edge],
    entry: str | None,
    tries: Mapping[str, int] | None = None,
) -> str:
    """``nodes``: name -> status, in the order they are drawn in their layer; ``tries``: the
    failed attempts of each node, said under its status."""
    placed = layout(layers(list(nodes), edges, entry))
    width, height = f"{placed.width:g}", f"{placed.height:g}"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="the run\'s graph">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>',
    ]
    parts += [_group(members, box, nodes) for members, box in placed.groups]
    parts += _edges(edges, placed)
    failures = tries or {}
    parts += [_node(name, status, failures.get(name, 0), placed) for name, status in nodes.items()]
    parts.append("</svg>")
    return "\n".join(parts)


def legend() -> str:
    """One swatch per status, drawn as a node of that status is."""
    items = [
        f'<span class="key"><svg class="swatch" width="22" height="14" aria-hidden="true">'
        f'<g class="node {status}"><rect x="1" y="1" width="20" height="12" rx="3"/></g></svg>'
        f"{status}</span>"
        for status in LEGEND
    ]
    return '<p class="legend" id="legend">' + " ".join(items) + "</p>"


def _ends(name: str, placed: Layout) -> tuple[tuple[float, float], tuple[float, float]]:
    """Where an arrow leaves a node (bottom centre) and enters it (top centre), or its group."""
    if name in placed.member:
        gx, gy, gw, gh = placed.groups[placed.member[name]][1]
        return (gx + gw / 2, gy + gh), (gx + gw / 2, gy)
    x, y = placed.at[name]
    return (x + BOX_W / 2, y + BOX_H), (x + BOX_W / 2, y)


def _edges(edges: Sequence[Edge], placed: Layout) -> list[str]:
    drawn: dict[tuple[str, str], str] = {}
    for edge in edges:
        if edge.source not in placed.at or edge.target not in placed.at:
            continue
        a = _key(edge.source, placed)
        b = _key(edge.target, placed)
        if a != b:
            drawn.setdefault((a, b), edge.kind)
    lines = []
    for (a, b), kind in drawn.items():
        (x1, y1), _ = _ends(_any(a, placed), placed)
        _, (x2, y2) = _ends(_any(b, placed), placed)
        lines.append(
            f'<line class="edge {escape(kind)}" x1="{x1:g}" y1="{y1:g}" x2="{x2:g}" y2="{y2:g}" '
            'marker-end="url(#arrow)"/>'
        )
    return lines


def _key(name: str, placed: Layout) -> str:
    """A node, or ``#n`` for the group it is drawn in: one arrow stands for its members'."""
    return f"#{placed.member[name]}" if name in placed.member else name


def _any(key: str, placed: Layout) -> str:
    return placed.groups[int(key[1:])][0][0] if key.startswith("#") else key


def _group(
    members: list[str], box: tuple[float, float, float, float], nodes: Mapping[str, str]
) -> str:
    x, y, w, h = box
    counts = Counter(nodes[m] for m in members)
    order = {status: i for i, status in enumerate(LEGEND)}
    ranked = sorted(counts.items(), key=lambda count: order.get(count[0], len(order)))
    said = ", ".join(f"{n} {status}" for status, n in ranked)
    return (
        f'<g class="group"><rect x="{x:g}" y="{y:g}" width="{w:g}" height="{h:g}" rx="8"/>'
        f'<text x="{x + MARGIN:g}" y="{y + 15:g}">{len(members)} side by side: '
        f"{escape(said)}</text></g>"
    )


def _node(name: str, status: str, tries: int, placed: Layout) -> str:
    x, y = placed.at[name]
    label = escape(name if len(name) <= 18 else name[:17] + "…")
    state = escape(status)
    said = status
    if status == "failed" and tries > 1:
        said += f" · {tries} attempts"
    elif status != "failed" and tries:
        said += f" · {_retries(tries)}"
    return (
        f'<g class="node {state}" data-node="{escape(name)}" data-status="{state}">'
        f"<title>{escape(name)}: {escape(said)}</title>"
        f'<rect x="{x:g}" y="{y:g}" width="{BOX_W}" height="{BOX_H}" rx="6"/>'
        f'<text x="{x + BOX_W / 2:g}" y="{y + 18:g}" text-anchor="middle">{label}</text>'
        f'<text class="status" x="{x + BOX_W / 2:g}" y="{y + 34:g}" '
        f'text-anchor="middle">{escape(said)}</text></g>'
    )


def _retries(n: int) -> str:
    return "1 retry" if n == 1 else f"{n} retries"
