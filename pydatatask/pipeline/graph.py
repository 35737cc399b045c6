"""The task graph: which task feeds which, through which repository. Computed once."""

from __future__ import annotations

from dataclasses import dataclass

from ..repository.base import Repository
from ..repository.view import stored_repositories
from ..task.base import Task

__all__ = ("Edge", "TaskGraph")


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

    # ---------------------------------------------------------------- exports
    def to_dot(self) -> str:
        """Graphviz DOT."""
        lines = ["digraph pipeline {", "  rankdir=LR;", "  node [shape=box];"]
        for name in self.order():
            lines.append(f'  "{name}";')
        for e in self.edges:
            lines.append(f'  "{e.upstream}" -> "{e.downstream}" [label="{e.out_link} -> {e.in_link}"];')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_mermaid(self) -> str:
        """A Mermaid flowchart."""
        lines = ["flowchart LR"]
        ids = {name: f"t{i}" for i, name in enumerate(self.order())}
        for name, ident in ids.items():
            lines.append(f'  {ident}["{name}"]')
        for e in self.edges:
            lines.append(f"  {ids[e.upstream]} -->|{e.out_link} → {e.in_link}| {ids[e.downstream]}")
        return "\n".join(lines) + "\n"

    def to_text(self) -> str:
        """A plain-text tree from the roots down."""
        lines: list[str] = []
        roots = [n for n in self.order() if not self.upstream[n]] or self.order()[:1]

        def walk(name: str, prefix: str, via: str, path: set[str]) -> None:
            lines.append(f"{prefix}{name}{via}")
            if name in path:
                return
            for e in self.edges:
                if e.upstream == name:
                    walk(e.downstream, prefix + "  ", f"  (via {e.out_link} -> {e.in_link})", path | {name})

        for root in roots:
            walk(root, "", "", set())
        return "\n".join(lines) + "\n"


def _underlying(repo: Repository) -> list[Repository]:
    """The stored repositories behind ``repo``: itself, or for a view those under it
    (a task writing through a view and one reading through another meet there)."""
    return stored_repositories(repo)
