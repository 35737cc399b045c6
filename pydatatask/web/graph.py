"""The graph of tasks and repositories as an SVG picture, laid out here (no graphviz).

Layered layout, left to right: a node's column is the longest path to it from a node
nothing flows into; within a column nodes keep the drawing order, then are sorted by the
mean row of what flows into them (one pass of the barycentre heuristic), which keeps a
chain of stages on one line and crossings few at 20 tasks.
"""

from __future__ import annotations

from html import escape

from ..pipeline.graph import Drawing

__all__ = ("graph_svg", "layout")

NODE_W = 190
NODE_H = 46
COL_GAP = 80
ROW_GAP = 22
MARGIN = 12
_LABEL = 26  # characters shown of a label (the whole of it in the tooltip)


def layout(drawing: Drawing) -> dict[str, tuple[int, int]]:
    """``{node id: (column, row)}``."""
    ids = [n.id for n in drawing.nodes]
    incoming: dict[str, list[str]] = {i: [] for i in ids}
    for f in drawing.flows:
        if f.source in incoming and f.target in incoming and f.source != f.target:
            incoming[f.target].append(f.source)
    column: dict[str, int] = dict.fromkeys(ids, 0)
    for _ in range(len(ids)):  # longest paths; a cycle stops growing after len(ids) rounds
        changed = False
        for i in ids:
            best = max((column[s] + 1 for s in incoming[i]), default=0)
            if best > column[i] and best < len(ids):
                column[i] = best
                changed = True
        if not changed:
            break
    columns: dict[int, list[str]] = {}
    for i in ids:
        columns.setdefault(column[i], []).append(i)
    row: dict[str, float] = {}
    for c in sorted(columns):
        members = columns[c]
        for pos, i in enumerate(members):
            above = [row[s] for s in incoming[i] if s in row]
            row[i] = sum(above) / len(above) if above else float(pos)
        members.sort(key=lambda i: row[i])
        for pos, i in enumerate(members):
            row[i] = float(pos)
    return {i: (column[i], int(row[i])) for i in ids}


def _short(text: str) -> str:
    return text if len(text) <= _LABEL else text[: _LABEL - 1] + "…"


def graph_svg(drawing: Drawing) -> str:
    """The SVG document of ``drawing``: tasks as boxes (``data-task`` naming them, with a
    ``counts`` line the page fills in), repositories and views as rounded boxes."""
    places = layout(drawing)
    cols = max((c for c, _ in places.values()), default=0) + 1
    rows = max((r for _, r in places.values()), default=0) + 1
    width = 2 * MARGIN + cols * NODE_W + (cols - 1) * COL_GAP
    height = 2 * MARGIN + rows * NODE_H + (rows - 1) * ROW_GAP

    def xy(node: str) -> tuple[int, int]:
        c, r = places[node]
        return MARGIN + c * (NODE_W + COL_GAP), MARGIN + r * (NODE_H + ROW_GAP)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="tasks and repositories">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>',
    ]
    for f in drawing.flows:
        if f.source not in places or f.target not in places:
            continue
        sx, sy = xy(f.source)
        tx, ty = xy(f.target)
        x1, y1 = sx + NODE_W, sy + NODE_H // 2
        x2, y2 = tx, ty + NODE_H // 2
        if x2 <= x1:  # same column or backwards (a cycle): go round below
            x2, y2 = tx + NODE_W // 2, ty + NODE_H
        mid = (x1 + x2) // 2
        title = f"{f.kind} {f.link}".strip()
        parts.append(
            f'<path class="flow {escape(f.kind)}" d="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}" '
            f'marker-end="url(#arrow)"><title>{escape(title)}</title></path>'
        )
    for node in drawing.nodes:
        x, y = xy(node.id)
        tooltip = node.label if node.kind != "task" else f"task {node.label}"
        if node.description and node.description != node.label:
            tooltip += f"\n{node.description}"
        if node.links:
            tooltip += "\n" + ", ".join(node.links)
        attrs = f' data-task="{escape(node.label)}"' if node.kind == "task" else ""
        radius = 4 if node.kind == "task" else 14
        second = (
            f'<text class="counts" x="{x + 10}" y="{y + 36}" data-task="{escape(node.label)}"></text>'
            if node.kind == "task"
            else f'<text class="sub" x="{x + 10}" y="{y + 36}">{escape(_short(", ".join(node.links)))}</text>'
        )
        parts.append(
            f'<g class="node {escape(node.kind)}" id="node-{escape(node.id)}"{attrs}>'
            f"<title>{escape(tooltip)}</title>"
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="{radius}"/>'
            f'<text class="label" x="{x + 10}" y="{y + 18}">{escape(_short(node.label))}</text>'
            f"{second}</g>"
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
