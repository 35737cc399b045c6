"""The task graph: which task feeds which, through which repository.

:class:`TaskGraph` holds the task-to-task :class:`Edge` list the scheduler uses (computed
once); :meth:`TaskGraph.drawing` adds the repositories between the tasks (a
:class:`Drawing` of :class:`Node` and :class:`Flow`), which the text, DOT and Mermaid
exports draw.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..repository.base import Repository
from ..repository.view import stored_repositories
from ..task.base import Task
from ..task.links import LinkKind

__all__ = ("Edge", "TaskGraph", "Drawing", "Node", "Flow")


@dataclass(frozen=True)
class Edge:
    """``upstream`` writes a repository (its link ``out_link``) that ``downstream`` reads
    (its link ``in_link``)."""

    upstream: str
    out_link: str
    downstream: str
    in_link: str
    repository: str


class TaskGraph:
    """Edges between tasks, found by shared repositories (no hand-drawn DAG)."""

    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = {t.name: t for t in tasks}
        self.edges: list[Edge] = []
        writers: dict[int, list[tuple[Task, str]]] = {}
        for task in tasks:
            for link in task.output_links:
                for repo in _underlying(link.repository):
                    writers.setdefault(id(repo), []).append((task, link.name))
        for task in tasks:
            for link in task.required_links:
                linked: set[tuple[str, str]] = set()
                for repo in _underlying(link.repository):
                    for up, out_link in writers.get(id(repo), []):
                        if up is not task and (up.name, out_link) not in linked:
                            linked.add((up.name, out_link))
                            self.edges.append(Edge(up.name, out_link, task.name, link.name, repo.describe()))
        self.upstream: dict[str, list[str]] = {name: [] for name in self.tasks}
        self.downstream: dict[str, list[str]] = {name: [] for name in self.tasks}
        for e in self.edges:
            if e.upstream not in self.upstream[e.downstream]:
                self.upstream[e.downstream].append(e.upstream)
            if e.downstream not in self.downstream[e.upstream]:
                self.downstream[e.upstream].append(e.downstream)

    def order(self) -> list[str]:
        """Task names, upstream before downstream where the graph allows (cycles kept stable)."""
        seen: set[str] = set()
        out: list[str] = []

        def visit(name: str, stack: set[str]) -> None:
            if name in seen or name in stack:
                return
            stack.add(name)
            for up in self.upstream[name]:
                visit(up, stack)
            stack.discard(name)
            seen.add(name)
            out.append(name)

        for name in self.tasks:
            visit(name, set())
        return out

    def descendants(self, name: str) -> list[str]:
        """Every task downstream of ``name``, nearest first."""
        out: list[str] = []
        todo = list(self.downstream[name])
        while todo:
            n = todo.pop(0)
            if n not in out and n != name:
                out.append(n)
                todo.extend(self.downstream[n])
        return out

    # ---------------------------------------------------------------- drawing
    def drawing(self) -> Drawing:
        """Tasks and the repositories they read and write, as nodes and flows.

        Computed on each call (descriptions such as a memory repository's key count change).
        """
        return _draw(self)

    def to_dot(self) -> str:
        """Graphviz DOT: tasks as boxes, repositories as cylinders, views as dashed cylinders."""
        d = self.drawing()
        lines = ["digraph pipeline {", "  rankdir=LR;"]
        for n in d.nodes:
            shape = {"task": "box", "repository": "cylinder", "view": "cylinder, style=dashed"}[n.kind]
            lines.append(f'  {n.id} [label="{_dot_escape(n.label)}", shape={shape}];')
        for f in d.flows:
            style = ", style=dashed" if f.kind == "view" else ""
            lines.append(f'  {f.source} -> {f.target} [label="{_dot_escape(f.link or "view")}"{style}];')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_mermaid(self) -> str:
        """A Mermaid flowchart in pure ASCII (other characters as Mermaid entity codes)."""
        d = self.drawing()
        lines = ["flowchart LR"]
        for n in d.nodes:
            label = _mermaid_escape(n.label, keep="()")  # inside quotes: parentheses are text
            shape = '["{}"]' if n.kind == "task" else '[("{}")]' if n.kind == "repository" else '{{{{"{}"}}}}'
            lines.append(f"  {n.id}" + shape.format(label))
        for f in d.flows:
            arrow = "-.->" if f.kind == "view" else "-->"
            lines.append(f"  {f.source} {arrow}|{_mermaid_escape(f.link or 'view')}| {f.target}")
        return "\n".join(lines) + "\n"

    def to_text(self) -> str:
        """An indented tree from the sources: ``[repository] --link--> task --link--> [repository]``.

        A node met again is printed with ``(see above)`` and not expanded again, one on the
        current path with ``(cycle)``; parts no source reaches (cycles) start at their first
        node, so every task and repository appears.
        """
        d = self.drawing()
        nodes = {n.id: n for n in d.nodes}
        out: dict[str, list[Flow]] = {n.id: [] for n in d.nodes}
        has_in: set[str] = set()
        for f in d.flows:
            out[f.source].append(f)
            has_in.add(f.target)
        roots = [n.id for n in d.nodes if n.id not in has_in]
        reached: set[str] = set()
        todo = list(roots)
        while todo:
            ident = todo.pop()
            if ident not in reached:
                reached.add(ident)
                todo.extend(f.target for f in out[ident])
        lines: list[str] = []
        shown: set[str] = set()

        def name(node: Node) -> str:
            label = "".join(c if c.isprintable() else repr(c)[1:-1] for c in node.label)
            return label if node.kind == "task" else f"[{label}]"

        def walk(ident: str, prefix: str, path: tuple[str, ...]) -> None:
            if ident in path:
                lines[-1] += "  (cycle)"
                return
            if ident in shown:
                lines[-1] += "  (see above)"
                return
            shown.add(ident)
            for f in out[ident]:
                arrow = "..view..>" if f.kind == "view" else f"--{f.link}-->"
                lines.append(f"{prefix}  {arrow} {name(nodes[f.target])}")
                walk(f.target, prefix + "  ", (*path, ident))

        for node in d.nodes:
            if node.id in shown or (node.id not in roots and node.id in reached):
                continue
            lines.append(name(node))
            walk(node.id, "", ())
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Node:
    """A task (``kind="task"``, ``label`` its name) or a repository (``"repository"``, or
    ``"view"`` for a combinator over others; ``label`` its description) in a drawing.

    ``description`` is the task's one-line description or the repository's class name;
    ``links`` the ``TASK.LINK`` names that reach a repository directly.
    """

    id: str
    kind: str
    label: str
    description: str
    links: tuple[str, ...] = ()


@dataclass(frozen=True)
class Flow:
    """Data going from node ``source`` to node ``target`` (node ids).

    ``kind`` is ``"reads"`` (repository -> task, through the task's link ``link``),
    ``"writes"`` (task -> repository) or ``"view"`` (between a view and a repository under
    it, ``link`` empty: from the child to the view where tasks read through it, from the
    view to the child where they write through it).
    """

    source: str
    target: str
    kind: str
    link: str = ""


@dataclass(frozen=True)
class Drawing:
    """Nodes in drawing order (upstream first) and the flows between them."""

    nodes: list[Node]
    flows: list[Flow]

    def as_dict(self) -> dict[str, Any]:
        """``{"nodes": [...], "edges": [...]}`` for JSON."""
        return {
            "nodes": [{**asdict(n), "links": list(n.links)} for n in self.nodes],
            "edges": [asdict(f) for f in self.flows],
        }


_STATE = (LinkKind.DONE, LinkKind.LIVE, LinkKind.LOGS)


def _children(repo: Repository) -> tuple[Repository, ...]:
    return tuple(getattr(repo, "children", ()))


def _draw(graph: TaskGraph) -> Drawing:
    order = graph.order()
    task_ids = {name: f"t{i}" for i, name in enumerate(order)}
    repos: dict[int, Repository] = {}
    repo_ids: dict[int, str] = {}
    specs: dict[int, list[str]] = {}
    sequence: list[str] = []  # node ids in drawing order
    flows: dict[Flow, None] = {}  # ordered set

    def visit(repo: Repository, writing: bool) -> str:
        """The node of ``repo``, made on first sight; views bring their children (upstream
        of the view where a task reads through it, downstream where it writes)."""
        key = id(repo)
        new = key not in repo_ids
        if new:
            repo_ids[key] = f"r{len(repo_ids)}"
            repos[key] = repo
            specs[key] = []
            if writing:
                sequence.append(repo_ids[key])
        for child in _children(repo):
            child_id = visit(child, writing)
            flow = Flow(repo_ids[key], child_id, "view") if writing else Flow(child_id, repo_ids[key], "view")
            flows[flow] = None
        if new and not writing:
            sequence.append(repo_ids[key])
        return repo_ids[key]

    drawn: set[tuple[str, str]] = set()
    for name in order:
        task = graph.tasks[name]
        tid = task_ids[name]
        for link in task.links.values():
            if link.required_for_start or link.kind in (LinkKind.INPUT, LinkKind.OTHER):
                flows[Flow(visit(link.repository, False), tid, "reads", link.name)] = None
                specs[id(link.repository)].append(f"{name}.{link.name}")
                drawn.add((name, link.name))
        sequence.append(tid)
        for link in task.output_links:
            flows[Flow(tid, visit(link.repository, True), "writes", link.name)] = None
            specs[id(link.repository)].append(f"{name}.{link.name}")
            drawn.add((name, link.name))
    for name in order:  # records, claims and logs only where another task reads them
        for link in graph.tasks[name].links.values():
            if link.kind in _STATE and (name, link.name) not in drawn and id(link.repository) in repo_ids:
                flows[Flow(task_ids[name], repo_ids[id(link.repository)], "writes", link.name)] = None
                specs[id(link.repository)].append(f"{name}.{link.name}")
    by_id = {v: k for k, v in repo_ids.items()}
    nodes: list[Node] = []
    for ident in sequence:
        if ident.startswith("t"):
            task = graph.tasks[order[int(ident[1:])]]
            nodes.append(Node(ident, "task", task.name, task.describe()))
        else:
            repo = repos[by_id[ident]]
            kind = "view" if _children(repo) else "repository"
            links = tuple(specs[by_id[ident]])
            nodes.append(Node(ident, kind, repo.describe(), type(repo).__name__, links))
    return Drawing(nodes, list(flows))


def _dot_escape(text: str) -> str:
    """The inside of a DOT double-quoted string: backslash, quote and line breaks escaped."""
    return (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\r\n", "\\n")
        .replace("\n", "\\n")
        .replace("\r", "\\n")
    )


_MERMAID_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _./*,:=+@-")


def _mermaid_escape(text: str, keep: str = "") -> str:
    """Mermaid label text: letters, digits, a few safe marks and ``keep`` as they are, every
    other character (quotes, brackets, ``|``, ``#``, non-ASCII, ...) as an entity code
    ``#NNN;`` (decimal code point), so the output is ASCII and no label ends a shape early."""
    return "".join(c if c in _MERMAID_PLAIN or c in keep else f"#{ord(c)};" for c in text)


def _underlying(repo: Repository) -> list[Repository]:
    """The stored repositories behind ``repo``: itself, or for a view those under it
    (a task writing through a view and one reading through another meet there)."""
    return stored_repositories(repo)
